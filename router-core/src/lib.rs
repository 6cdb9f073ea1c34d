//! Pure core of the events router.
