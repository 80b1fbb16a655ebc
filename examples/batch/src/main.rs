//! A batch job for Drover: prints what a pod gives it (arguments, environment, mounted files),
//! counts to three and exits 0. A pod running it ends `Succeeded`, and `kubectl logs` shows this.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("batch: started with args {args:?}");
    for name in ["HOSTNAME", "GREETING", "PASSWORD"] {
        if let Ok(v) = std::env::var(name) {
            println!("batch: {name}={v}");
        }
    }
    // Files the pod mounts (configMap and secret volumes) show up as preopened directories.
    // READ_DIR may name several directories, separated by ':'.
    for dir in std::env::var("READ_DIR").unwrap_or_default().split(':').filter(|d| !d.is_empty()) {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
                names.sort();
                for path in names.into_iter().filter(|p| p.is_file()) {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    println!("batch: file {} = {}", path.display(), text.trim());
                }
            }
            Err(e) => println!("batch: cannot read {dir}: {e}"),
        }
    }
    for i in 1..=3 {
        println!("batch: step {i}");
    }
    eprintln!("batch: done");
}
