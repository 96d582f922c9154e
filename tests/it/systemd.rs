//! The shipped systemd units pass `systemd-analyze verify`, with `ExecStart` rewritten to the
//! binary under test (verify checks that the program exists). Skips, saying why, when
//! `systemd-analyze` is not installed (Debian package systemd; `.ci/run` installs it).

use std::process::Command;

#[test]
fn systemd_analyze_verifies_the_shipped_units() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze is not installed (Debian package systemd), so the units were not verified");
        return;
    }
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("Restart=on-failure") && !text.contains("Restart=always"), "{}", path.display());
        assert!(text.contains("#MemoryMax=") && text.contains("#CPUQuota="), "commented resource examples");
        let rewritten: String = text
            .lines()
            .map(|l| match l.strip_prefix("ExecStart=") {
                Some(cmd) => {
                    let args = cmd.split_once(' ').map_or("", |(_, a)| a);
                    format!("ExecStart={} {args}\n", env!("CARGO_BIN_EXE_orchestrator"))
                }
                None => format!("{l}\n"),
            })
            .collect();
        let copy = dir.path().join(path.file_name().unwrap());
        std::fs::write(&copy, rewritten).unwrap();
        let o = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().unwrap();
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        // Lines about the machine rather than the unit (no systemd running here, a target the
        // host lacks) are not the unit's fault; anything naming the unit file is.
        let name = copy.file_name().unwrap().to_string_lossy().to_string();
        let about_unit: Vec<&str> = out.lines().filter(|l| l.contains(&name)).collect();
        assert!(o.status.success() && about_unit.is_empty(), "systemd-analyze verify {name}:\n{out}");
        checked += 1;
    }
    assert!(checked >= 1, "no unit found under {}", units.display());
}
