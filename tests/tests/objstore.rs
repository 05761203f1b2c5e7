//! The PBS daemon with its archive in a real S3 server (Garage on loopback, started here):
//! the whole cycle exporter → PBS → clone over loopback, generation after generation; the
//! archive is in the bucket (only scratch is local); a PBS killed with SIGKILL and started
//! again serves the same history and takes the next generation.

use std::fs;

use pullback_tests::cluster::{Cluster, Options, Who};
use pullback_tests::garage::Garage;
use pullback_tests::{assert_same_tree, snapshot, write, Pbs, Rng};

#[test]
fn a_pbs_with_its_archive_in_a_bucket_runs_the_whole_cycle() {
    let gdir = tempfile::tempdir().expect("temp dir");
    let garage = Garage::start(gdir.path());
    let mut c = Cluster::new(Options {
        pbs_extra: garage.archive_s3_toml("pbs1"),
        ..Options::default()
    });
    let mut rng = Rng::new(11);
    write(&c.src().join("table.csv"), &rng.text(2_000_000));
    write(&c.src().join("blob.bin"), &rng.bytes(700_000));
    write(&c.src().join("sub/notes.txt"), &rng.text(4_000));
    c.start_all();
    c.cycle(1);
    assert_same_tree(&snapshot(&c.src()), &snapshot(&c.clone_data(0)), "files/1");

    let p = c.src().join("table.csv");
    let mut d = fs::read(&p).expect("table");
    d.splice(1_000_000..1_000_000, b"a new row\n".iter().copied());
    fs::write(&p, d).expect("table");
    c.cycle(2);
    assert_same_tree(&snapshot(&c.src()), &snapshot(&c.clone_data(0)), "files/2");

    // SIGKILL the PBS; started again on the same bucket it has both generations and
    // takes the next.
    c.kill(Who::Pbs);
    c.start(Who::Pbs);
    write(&c.src().join("sub/more.txt"), &rng.text(9_000));
    c.cycle(3);
    assert_same_tree(&snapshot(&c.src()), &snapshot(&c.clone_data(0)), "files/3");

    let local = c.path().join("pbs/archive");
    let ar = Pbs::with_config(&local, c.config(Who::Pbs));
    let gens: Vec<String> = ar
        .list()
        .iter()
        .map(|g| g["generation"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(gens, ["files/1", "files/2", "files/3"]);
    let v = ar.json(&["verify", "--full"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");

    let objects = garage.objects("pbs1");
    for seq in 1..=3 {
        let key = format!("pbs1/gens/files/{seq:020}.gen");
        assert!(objects.contains(&key), "{key} not in {objects:?}");
    }
    assert!(
        objects.iter().any(|k| k.starts_with("pbs1/packs/")),
        "{objects:?}"
    );
    assert!(objects.contains(&"pbs1/config".to_string()), "{objects:?}");
    assert!(
        !local.join("packs").exists() && !local.join("gens").exists(),
        "packs or records written locally"
    );
}
