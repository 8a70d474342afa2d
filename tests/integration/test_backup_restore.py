"""``gridcharge backup`` / ``restore`` as processes, on a state written by the real code: the
variable file's own save, a grid log with rows, a TLS pair from the test PKI in the config's
``smgw`` section and an uploaded pair in ``state_dir/tls``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from controller.records.gridlog import GridLog
from controller.records.sessions import Session, SessionLog
from controller.records.persistence import SavedVariables, VariableFile, parse_saved
from pki import make_pki

ROOT = Path(__file__).resolve().parents[2]


def gridcharge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


class Site:
    """A config in ``etc/`` with its TLS files in ``etc/tls/``, and a state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc, self.state = root / "etc", root / "state"
        (self.etc / "tls").mkdir(parents=True)
        pki = make_pki(root / "pki")
        self.cert, self.key = pki.server.write(self.etc / "tls", "cm")
        self.client_ca = pki.ca.write(self.etc / "tls" / "smgw-ca.pem")
        self.config = self.etc / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "site": {"main_fuse_a": 25},
            "variables": {"AVAIL": 100},
            "state_dir": str(self.state),
            "smgw": {"listen": "127.0.0.1:18443", "cert": str(self.cert), "key": str(self.key),
                     "client_ca": str(self.client_ca)},
        }))
        VariableFile(self.state).save(SavedVariables({"AVAIL": 40, "TARIF": "1 if AVAIL > 50 else 0"},
                                                     generation=3, saved_at=1767614400.0))
        self.add_log_rows(range(3))
        self.add_sessions(2)
        upload = self.state / "tls"
        upload.mkdir(mode=0o700)
        pki.server2.write(upload, "cm")

    def add_log_rows(self, numbers: range) -> None:
        grid_log = GridLog(self.state / "gridlog.sqlite3")
        grid_log.open()
        grid_log.start()
        for i in numbers:
            grid_log.record("variable", "AVAIL", i, i + 1, "lan:10.0.0.9", 1000.0 + i, ts=1767614400.0 + i)
        grid_log.stop()

    def add_sessions(self, n: int) -> None:
        sessions = SessionLog(self.state / "sessions.sqlite3")
        sessions.start()
        for _ in range(n):
            sid = sessions.new_id()
            sessions.save(Session(sid, "E1", 1767614400.0 + sid, 1767614500.0 + sid, 1000.0, 1500.0, 500.0,
                                  "register", updated_ts=1767614500.0 + sid))
        sessions.stop()

    def session_ids(self) -> list[int]:
        return [s.id for s in SessionLog(self.state / "sessions.sqlite3").query()]

    def log_rows(self) -> list[tuple[float, object]]:
        return [(e.ts, e.new) for e in GridLog(self.state / "gridlog.sqlite3").query()]

    def files(self) -> dict[str, str]:
        """Every file under the site (not the PKI) with the SHA-256 of its content."""
        return {str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for base in (self.etc, self.state) for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.fixture()
def site(tmp_path: Path) -> Site:
    return Site(tmp_path / "site")


def test_round_trip_puts_every_file_back_and_keeps_the_changed_ones_aside(site: Site, tmp_path: Path) -> None:
    archive = tmp_path / "backup.tar.gz"
    made = gridcharge("backup", str(archive), "--config", str(site.config))
    assert made.returncode == 0, made.stderr
    assert oct(archive.stat().st_mode & 0o777) == "0o600"  # keys and the password hash inside
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted([
            "manifest.json", "config.yaml", "state/variables.json", "state/gridlog.sqlite3", "state/sessions.sqlite3",
            "state/tls/cm.pem", "state/tls/cm.key", "smgw/cert.pem", "smgw/key.pem", "smgw/client_ca.pem"])
    before, rows = site.files(), site.log_rows()
    assert len(rows) == 3 and site.session_ids() == [1, 2]

    # after the backup: the config is edited, variables change, the log grows, a new pair is uploaded
    site.config.write_text(site.config.read_text().replace("main_fuse_a: 25", "main_fuse_a: 32"))
    VariableFile(site.state).save(SavedVariables({"AVAIL": 0}, generation=9, saved_at=1767700000.0))
    site.add_log_rows(range(10, 15))
    site.add_sessions(3)
    (site.state / "tls" / "cm.key").write_text("changed\n")
    changed = site.files()

    done = gridcharge("restore", str(archive), "--config", str(site.config))
    assert done.returncode == 0, done.stderr
    assert "kept as config.yaml.before-restore-" in done.stdout
    after = site.files()
    logs = ("gridlog.sqlite3", "sessions.sqlite3")  # snapshots: the same rows, other bytes
    assert {k: v for k, v in after.items() if ".before-restore-" not in k
            and not k.endswith(logs)} == {k: v for k, v in before.items() if not k.endswith(logs)}
    assert site.log_rows() == rows  # the log as it was at the backup (a snapshot: same rows)
    assert site.session_ids() == [1, 2]
    assert parse_saved((site.state / "variables.json").read_text()).vars["AVAIL"] == 40
    kept = {k: v for k, v in after.items() if ".before-restore-" in k}
    assert changed["etc/config.yaml"] in kept.values()  # nothing deleted: the edited config is kept
    assert changed["state/tls/cm.key"] in kept.values()
    assert oct((site.state / "tls" / "cm.key").stat().st_mode & 0o777) == "0o600"


def rewrite(source: Path, target: Path, replace: dict[str, bytes], *, fix_manifest: bool = True) -> None:
    """Copy a backup with some members' content replaced, the manifest updated to match unless
    ``fix_manifest`` is False (then the SHA-256 no longer fits)."""
    with tarfile.open(source) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    members.update(replace)
    if fix_manifest:
        manifest = json.loads(members["manifest.json"])
        for item in manifest["files"]:
            data = members[item["name"]]
            item["size"], item["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(target, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_bad_backup_changes_nothing_and_every_problem_is_listed(site: Site, tmp_path: Path) -> None:
    good = tmp_path / "good.tar.gz"
    assert gridcharge("backup", str(good), "--config", str(site.config)).returncode == 0
    other_key = make_pki(tmp_path / "pki2").server.key_pem.encode()
    bad_config = site.config.read_text().replace("main_fuse_a: 25", "main_fuse_a: 25\n  paritty: 1").encode()
    cases: dict[str, tuple[Path, list[str]]] = {}

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = (truncated, ["damaged"])
    altered = tmp_path / "altered.tar.gz"
    same_size = site.config.read_text().replace("main_fuse_a: 25", "main_fuse_a: 63").encode()
    rewrite(good, altered, {"config.yaml": same_size}, fix_manifest=False)
    cases["altered"] = (altered, ["config.yaml: its SHA-256 differs from the manifest's"])
    everything = tmp_path / "everything.tar.gz"
    rewrite(good, everything, {"config.yaml": bad_config, "state/gridlog.sqlite3": b"SQLite format 3\0" + b"x" * 4000,
                               "state/variables.json": b'{"format": 1, "vars": ',
                               "smgw/key.pem": other_key})
    cases["everything"] = (everything, ["config.yaml: site.paritty", "state/gridlog.sqlite3:",
                                        "state/variables.json: unusable", "smgw cert/key: the certificate and "
                                        "key do not load as a pair"])
    not_ours = tmp_path / "not-ours.tar.gz"
    with tarfile.open(not_ours, "w:gz") as tar:
        info = tarfile.TarInfo("etc/passwd")
        tar.addfile(info, io.BytesIO(b""))
    cases["not ours"] = (not_ours, ["no usable manifest.json"])

    before = site.files()
    for what, (archive, words) in cases.items():
        res = gridcharge("restore", str(archive), "--config", str(site.config))
        assert res.returncode == 1, (what, res.stdout, res.stderr)
        assert "restore refused, nothing changed" in res.stderr, what
        for word in words:
            assert word in res.stderr, (what, word, res.stderr)
        assert site.files() == before, what
        assert not any(".restore-" in p.name for p in site.root.rglob("*")), what


def test_refused_while_the_service_runs(site: Site, tmp_path: Path) -> None:
    archive = tmp_path / "backup.tar.gz"
    assert gridcharge("backup", str(archive), "--config", str(site.config)).returncode == 0
    config = yaml.safe_load(site.config.read_text())
    del config["smgw"]  # no listener needed to hold the grid log open
    # A site with a charger (without one, run stops at once: "site not configured"); nothing
    # listens on loopback port 1, so the box is simply offline.
    config["chargers"] = {"E1": {"model": "alfen", "host": "127.0.0.1", "port": 1, "unit": 1}}
    running_config = tmp_path / "running.yaml"
    running_config.write_text(yaml.safe_dump(config))
    service = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(running_config)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not any(str(site.state / "gridlog.sqlite3") == os.readlink(fd)
                      for fd in Path(f"/proc/{service.pid}/fd").iterdir() if fd.is_symlink()):
            assert time.monotonic() < deadline and service.poll() is None, "the service did not start"
            time.sleep(0.1)
        before = site.files()
        res = gridcharge("restore", str(archive), "--config", str(site.config))
    finally:
        service.send_signal(signal.SIGTERM)
        service.communicate(timeout=15)
    assert res.returncode == 1
    assert f"process {service.pid} (" in res.stderr and "has the grid log" in res.stderr
    assert "sudo systemctl stop gridcharge" in res.stderr
    written = ("gridlog", "sessions")  # the running service writes its logs
    assert {k: v for k, v in site.files().items() if not any(w in k for w in written)} == \
        {k: v for k, v in before.items() if not any(w in k for w in written)}
