//! A plain WASI command: a valid component of the wrong world.
fn main() {
    println!("hello from the wrong world");
}
