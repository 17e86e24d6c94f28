fn main() {
    let a: Vec<String> = std::env::args().collect();
    let vm = ktrace_symbols::Vmlinux::open(&a[1]).unwrap();
    let addr = vm.resolve(&a[2]).unwrap();
    let t = std::time::Instant::now();
    let scopes = vm.scopes_at(addr).unwrap();
    eprintln!("{:?}", t.elapsed());
    for s in scopes {
        println!("{} inlined={}", s.function, s.inlined);
        for p in s.params.iter().chain(&s.locals) {
            println!("  {} : {} = {:?}", p.name, vm.type_display(p.ty).unwrap(), p.location);
        }
    }
}
