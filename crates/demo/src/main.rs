//! shardq-demo.
fn main() {}
