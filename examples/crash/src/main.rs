//! A program that fails, to show how Drover reports it: by default it prints a line and exits
//! unsuccessfully (WASI 0.2's `exit` carries success or failure, so the code shows as 1; the pod goes into CrashLoopBackOff under restartPolicy Always); with
//! `MODE=oom` it keeps allocating until its memory limit stops it (reported OOMKilled); with
//! `MODE=spin` it loops forever without output (for CPU limits and stopping).

fn main() {
    match std::env::var("MODE").as_deref() {
        Ok("oom") => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                if hoard.len() % 16 == 0 {
                    println!("crash: holding {} MiB", hoard.len());
                }
            }
        }
        Ok("spin") => {
            let mut x: u64 = 0;
            loop {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                std::hint::black_box(x);
            }
        }
        _ => {
            println!("crash: something went wrong, exiting with 3");
            std::process::exit(3);
        }
    }
}
