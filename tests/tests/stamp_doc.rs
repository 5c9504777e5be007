//! docs/stamp.md is the contract for backends in other languages: run the
//! Python verifier printed there against the published test vector and
//! against stamps made by the Rust signer (and tampered copies of them).

use std::process::Command;

#[test]
fn python_verifier_from_the_doc_agrees_with_the_rust_signer() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/stamp.md")).unwrap();
    let code = doc
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("python block");
    let now = e2e::unix_now();
    let fresh = e2e::sign(
        "mclaren",
        "POST",
        "McLaren.myapp.localhost:8443",
        "/projects/7",
        now,
        false,
    );
    let script = format!(
        r#"{code}
keys = {{"k1": "test-secret-0123456789abcdef"}}
vec = "v1;kid=k1;ts=1700000000;sig=a4060d32a52e25785b958fde9ec5ca1d7156524f0e617f9473087ecedfaefe1d"
assert verify(keys, "ferrari", vec, "GET", "Ferrari.MyApp.localhost:8080", "/projects/1/tasks", now=1700000005) == "ferrari"
def fails(code, *a, **kw):
    try:
        verify(*a, **kw)
    except ValueError as e:
        assert str(e) == code, (str(e), code)
        return
    raise AssertionError("accepted: " + code)
fails("stamp_bad_signature", keys, "mclaren", vec, "GET", "ferrari.myapp.localhost", "/projects/1/tasks", now=1700000000)
fails("stamp_expired", keys, "ferrari", vec, "GET", "ferrari.myapp.localhost", "/projects/1/tasks", now=1700000031)
fails("stamp_unknown_key", {{"k2": "x"}}, "ferrari", vec, "GET", "ferrari.myapp.localhost", "/projects/1/tasks", now=1700000000)
rust = {{"k1": "{secret}"}}
assert verify(rust, "mclaren", "{fresh}", "POST", "McLaren.myapp.localhost:8443", "/projects/7") == "mclaren"
fails("stamp_bad_signature", rust, "mclaren", "{fresh}", "GET", "mclaren.myapp.localhost", "/projects/7")
print("ok")
"#,
        secret = e2e::STAMP_SECRET,
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3 is required");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
