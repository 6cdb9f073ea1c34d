//! Load generator and mock destinations for the events router (black-box, over HTTP).
