//! The `opie` command: ISU and head daemons.
fn main() {}
