//! CHAP authentication, sans-I/O. Under construction.
