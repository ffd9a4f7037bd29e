fn main() {
    eprintln!("stratafs: not yet functional");
    std::process::exit(1);
}
