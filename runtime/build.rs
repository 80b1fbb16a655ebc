//! Checks, before anything links, that libseccomp's development files are installed: the oci
//! backend's libcontainer links libseccomp (the default seccomp profile), and without them a
//! build ends in a bare linker error (`unable to find library -lseccomp`) that names no fix.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-env-changed=LIBSECCOMP_LIB_PATH");
    println!("cargo::rerun-if-env-changed=LIBSECCOMP_LINK_TYPE");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let multiarch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "",
    };
    let mut dirs: Vec<String> = std::env::var("LIBSECCOMP_LIB_PATH").into_iter().collect();
    for base in ["/usr/lib", "/lib", "/usr/local/lib"] {
        dirs.push(format!("{base}/{multiarch}"));
        dirs.push(base.to_string());
    }
    dirs.push("/usr/lib64".into());
    let found = dirs.iter().any(|d| {
        ["libseccomp.so", "libseccomp.a"]
            .iter()
            .any(|f| Path::new(d).join(f).exists())
    });
    if !found {
        eprintln!(
            "\nDrover's container runtime links libseccomp, and its development files are not \
             installed.\nInstall them (Debian/Ubuntu: `apt-get install libseccomp-dev`; Fedora: \
             `dnf install libseccomp-devel`), or set LIBSECCOMP_LIB_PATH to the directory that \
             holds libseccomp.so.\n(scripts/up.sh and scripts/test.sh install it themselves.)\n"
        );
        std::process::exit(1);
    }
}
