//! `dkim-relay dmarc import` / `dmarc report`, doctor's advice from the reports and the
//! /metrics gauge, through the built binary on the sample reports in tests/data/dmarc
//! (Google's zip, Microsoft's multipart mail with a .xml.gz, Yahoo's .xml.gz, DMARCbis XML)
//! and on hostile input generated here.

mod common;

use common::dns::TestDns;
use common::DOMAIN;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// 2026-12-01 00:00 UTC: the samples cover 28 to 30 November 2026.
const NOW: &str = "1796083200";

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dmarc")
}

/// The four well-formed samples.
fn good_samples() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(samples())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".zip") || n.ends_with(".gz") || n.ends_with(".eml") || n == "dmarcbis.xml"
        })
        .collect();
    out.sort();
    assert_eq!(out.len(), 4);
    out
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// Active keys s1/e1 for example.com and example.org, an SES upstream, a spool folder.
fn setup(resolver: Option<std::net::SocketAddr>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let base = common::config(dir.path(), None);
    let config = dir.path().join("relay.toml");
    let resolver = resolver
        .map(|r| format!("[rotation]\nresolver = \"{r}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "[spool]\ndir = \"{}\"\n[keys]\ndir = \"{}\"\n[[domains]]\nname = \"example.com\"\ned25519 = true\n[[domains]]\nname = \"example.org\"\ned25519 = true\n[upstream]\nhost = \"email-smtp.eu-west-1.amazonaws.com\"\nprofile = \"ses\"\n{resolver}",
            base.spool.dir.display(),
            base.keys.dir.display()
        ),
    )
    .unwrap();
    Setup { dir, config }
}

fn run(s: &Setup, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dkim-relay"))
        .arg("--config")
        .arg(&s.config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.map(<[u8]>::to_vec);
    let writer = std::thread::spawn(move || {
        if let Some(bytes) = input {
            // The relay may refuse and close early: a broken pipe is expected then.
            let _ = pipe.write_all(&bytes);
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn import_samples(s: &Setup) -> Output {
    let mut args = vec!["dmarc".to_string(), "import".to_string()];
    args.extend(good_samples().iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(s, &args, None)
}

fn stored(s: &Setup) -> usize {
    std::fs::read_dir(s.dir.path().join("spool/dmarc"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn the_samples_import_once_and_report_failing_sources_first() {
    let s = setup(None);
    let out = import_samples(&s);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("4 report(s) stored, 0 already stored, 0 refused"),
        "{}",
        text(&out)
    );
    assert_eq!(stored(&s), 4);
    // The same mail again (fetched twice): stored once.
    let again = import_samples(&s);
    assert!(again.status.success());
    assert!(
        text(&again).contains("0 report(s) stored, 4 already stored"),
        "{}",
        text(&again)
    );
    assert_eq!(stored(&s), 4);

    let out = run(&s, &["dmarc", "report", "--now", NOW], None);
    assert!(out.status.success(), "{}", text(&out));
    println!("{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.contains("example.com (policy p=none, last 14 days: 4 report(s)"),
        "{report}"
    );
    assert!(
        report
            .contains("12,503 message(s): DKIM aligned 99.7%, SPF aligned 0.7%, DMARC pass 99.7%"),
        "{report}"
    );
    let failing = report.find("failing sources:").unwrap();
    let forger = report
        .find("203.0.113.9 [not this relay]: 31 of 31 message(s) failed DMARC")
        .unwrap();
    let ses = report
        .find("54.240.3.10 [this relay, through Amazon SES]: 9,800 message(s), all passed")
        .unwrap();
    assert!(failing < forger && forger < ses, "{report}");
    assert!(
        report
            .contains("s1._domainkey.example.com (this relay's, active): 12,472 of 12,472 passed"),
        "{report}"
    );
    assert!(
        report.contains("._domainkey.amazonses.com (not this relay's)"),
        "{report}"
    );
    assert!(report.contains("none (delivered): 12,503"), "{report}");

    let out = run(
        &s,
        &[
            "dmarc",
            "report",
            "--domain",
            "example.com",
            "--json",
            "--days",
            "30",
            "--now",
            NOW,
        ],
        None,
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &json[0];
    assert_eq!(d["domain"], "example.com");
    assert_eq!(d["messages"], 12503);
    assert_eq!(d["dmarc_pass"], 12472);
    assert_eq!(d["sources"][0]["ip"], "203.0.113.9");
    assert_eq!(d["sources"][0]["sender"]["kind"], "other");
    // The period is an input: nothing is that recent a week later.
    let out = run(
        &s,
        &["dmarc", "report", "--days", "2", "--now", "1796688000"],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no messages reported in the period"));
}

#[test]
fn stdin_a_maildir_and_an_mbox_are_read() {
    let s = setup(None);
    let yahoo = good_samples()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("yahoo"))
        .unwrap();
    let out = run(
        &s,
        &["dmarc", "import", "-"],
        Some(&std::fs::read(yahoo).unwrap()),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("stored: Yahoo report"),
        "{}",
        text(&out)
    );

    let eml = std::fs::read(samples().join("microsoft.eml")).unwrap();
    let maildir = s.dir.path().join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::write(maildir.join("cur/1764390093.M1P2.mx:2,S"), &eml).unwrap();
    std::fs::write(
        maildir.join("new/1764390094.M2P2.mx"),
        b"Subject: hello\r\n\r\nnot a report\r\n",
    )
    .unwrap();
    let out = run(&s, &["dmarc", "import", maildir.to_str().unwrap()], None);
    assert!(
        text(&out).contains("stored: Outlook.com report"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("carries no DMARC report"),
        "{}",
        text(&out)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a mail without a report is said, and counts"
    );

    let mut mbox = b"From dmarcreport@microsoft.com Sun Nov 29 04:21:33 2026\n".to_vec();
    mbox.extend_from_slice(&eml);
    let path = s.dir.path().join("dmarc.mbox");
    std::fs::write(&path, mbox).unwrap();
    let out = run(&s, &["dmarc", "import", path.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("already stored: Outlook.com"),
        "{}",
        text(&out)
    );
    assert_eq!(stored(&s), 2);
}

/// XML bombs, a gzip bomb, a zip bomb and an endless pipe are refused by name with exit
/// 1, and nothing is stored.
#[test]
fn hostile_inputs_are_refused_in_plain_words() {
    let s = setup(None);
    for (name, words) in [
        ("billion-laughs.xml", "has a DOCTYPE"),
        ("external-entity.xml", "has a DOCTYPE"),
    ] {
        let out = run(
            &s,
            &["dmarc", "import", samples().join(name).to_str().unwrap()],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(text(&out).contains(words), "{name}: {}", text(&out));
    }
    // 256 MB of XML text in a gzip of a quarter of a megabyte.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(b"<feedback><report_metadata><org_name>")
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..256 {
        e.write_all(&chunk).unwrap();
    }
    let bomb = e.finish().unwrap();
    let path = s.dir.path().join("bomb.xml.gz");
    std::fs::write(&path, &bomb).unwrap();
    let out = run(&s, &["dmarc", "import", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("the decompressed report is larger than 67108864 bytes"),
        "{}",
        text(&out)
    );

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file(
        "google.com!example.com!1!2.xml",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    zip.write_all(b"<feedback><report_metadata><org_name>")
        .unwrap();
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..200 {
        zip.write_all(&zeros).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    let path = s.dir.path().join("bomb.zip");
    std::fs::write(&path, &bytes).unwrap();
    let out = run(&s, &["dmarc", "import", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("the unzipped report is larger than"),
        "{}",
        text(&out)
    );

    // A mail larger than the input limit on standard input.
    let mut mail = b"Subject: report\r\nContent-Type: application/gzip\r\n\r\n".to_vec();
    mail.resize(40 << 20, b'A');
    let out = run(&s, &["dmarc", "import", "-"], Some(&mail));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("the input is larger than 33554432 bytes"),
        "{}",
        text(&out)
    );
    assert_eq!(stored(&s), 0);
}

struct Doctor {
    status: Option<i32>,
    stdout: String,
}

async fn doctor(s: &Setup) -> Doctor {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dkim-relay"))
        .arg("--config")
        .arg(&s.config)
        .args(["doctor", "--domain", DOMAIN, "--now", NOW])
        .output()
        .await
        .unwrap();
    Doctor {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// With p=none: without reports doctor says how to get them; with the samples imported it
/// judges by them, in the words.
#[tokio::test]
async fn doctor_advises_from_the_reports() {
    let dns = TestDns::start().await;
    let s = setup(Some(dns.addr));
    let keys = dkim_relay::keys::KeyStore::new(s.dir.path().join("keys"));
    dns.set_txt(DOMAIN, "v=spf1 include:amazonses.com -all");
    let state = keys.load(DOMAIN).unwrap().unwrap();
    for slot in &state.slots {
        let r = keys.record(DOMAIN, slot).unwrap();
        dns.set_txt(&r.name, &r.value);
    }
    dns.set_txt(
        &format!("_dmarc.{DOMAIN}"),
        "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com",
    );

    let before = doctor(&s).await;
    assert_eq!(before.status, Some(0), "{}", before.stdout);
    assert!(
        before
            .stdout
            .contains("no DMARC reports stored for example.com"),
        "{}",
        before.stdout
    );
    assert!(
        before.stdout.contains("dkim-relay dmarc import -"),
        "{}",
        before.stdout
    );

    let imported = import_samples(&s);
    assert!(imported.status.success());
    println!("{}", text(&imported));
    let after = doctor(&s).await;
    println!("{}", after.stdout);
    let warn: Vec<&str> = after
        .stdout
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("DMARC"))
        .collect();
    assert_eq!(warn.len(), 1, "{}", after.stdout);
    assert!(
        warn[0].contains("p=none for 3 days; in the last 14 days 99.7% of 12,503 messages passed aligned DKIM (99.7% passed DMARC), all failures come from 203.0.113.9 (not this relay): move to p=quarantine, or add that source first"),
        "{}",
        warn[0]
    );

    // The next steps: quarantine says reject is next; reject is fine.
    dns.set_txt(
        &format!("_dmarc.{DOMAIN}"),
        "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@example.com",
    );
    let quarantine = doctor(&s).await;
    println!("{}", quarantine.stdout);
    assert!(
        quarantine
            .stdout
            .contains("INFO  DMARC p=quarantine; in the last 14 days 99.7% of 12,503 messages"),
        "{}",
        quarantine.stdout
    );
    assert!(
        quarantine
            .stdout
            .contains("move to p=reject, or add that source first"),
        "{}",
        quarantine.stdout
    );
    dns.set_txt(
        &format!("_dmarc.{DOMAIN}"),
        "v=DMARC1; p=reject; rua=mailto:dmarc-reports@example.com",
    );
    let reject = doctor(&s).await;
    println!("{}", reject.stdout);
    assert!(
        reject.stdout.contains("receivers reject the rest"),
        "{}",
        reject.stdout
    );
    assert!(!reject.stdout.contains("WARN"), "{}", reject.stdout);
}

/// The running relay exports the pass ratios and picks up an import made while it runs.
#[tokio::test]
async fn metrics_export_the_pass_ratio_after_an_import() {
    let s = setup(None);
    let mut config = dkim_relay::config::Config::from_file(&s.config).unwrap();
    config.smtp.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    config.upstream = None;
    config.delivery.outbox_dir = s.dir.path().join("outbox");
    let relay = common::start(config).await;
    let http = relay.metrics_addr().unwrap();
    let (_, page) = common::http::get(http, "/metrics").await;
    assert!(!page.contains("dkim_relay_dmarc_pass_ratio{"), "{page}");

    assert!(import_samples(&s).status.success());
    let (_, page) = common::http::get(http, "/metrics").await;
    assert!(
        page.contains(
            "dkim_relay_dmarc_pass_ratio{domain=\"example.com\",selector=\"all\"} 0.9975"
        ),
        "{page}"
    );
    assert!(
        page.contains("dkim_relay_dmarc_pass_ratio{domain=\"example.com\",selector=\"s1\"} 1.0000"),
        "{page}"
    );
    assert!(
        page.contains(
            "dkim_relay_dmarc_pass_ratio{domain=\"example.com\",selector=\"other\"} 0.0000"
        ),
        "{page}"
    );
    assert!(
        !page.contains("dkim_relay_dmarc_pass_ratio{domain=\"example.org\""),
        "no reports, no series: {page}"
    );
    relay.shutdown().await;
}
