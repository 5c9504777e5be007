//! Embeds the versioned SQL files under migrations/{shared,tenant} into the binary.
use std::{env, fs, path::Path};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut out = String::new();
    for set in ["shared", "tenant"] {
        let dir = root.join(set);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<_> = fs::read_dir(&dir)
            .expect("migrations dir")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        out.push_str(&format!(
            "pub(super) const {}: &[(&str, &str)] = &[\n",
            set.to_uppercase()
        ));
        for f in files {
            let name = f.file_name().expect("file name").to_string_lossy().into_owned();
            out.push_str(&format!(
                "    ({name:?}, include_str!({:?})),\n",
                f.display().to_string()
            ));
        }
        out.push_str("];\n");
    }
    fs::write(
        Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("migrations.rs"),
        out,
    )
    .expect("write");
}
