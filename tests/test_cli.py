"""p4ft on bad input: clear errors naming what was wrong, and nothing changed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NS = "p4ft-clitest"


def p4ft(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "controller"))
    return subprocess.run([sys.executable, "-m", "p4flowtable.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.mark.parametrize("args,text", [
    (["daemon", "--port", "lan0"], "expected PORT=REPRESENTOR"),
    (["daemon", "--port", "1=a", "--port", "1=b"], "given twice"),
    (["daemon", "--timeout", "ft=-3"], "expected FLOWTABLE=SECONDS"),
    (["switch", "-i", "eth0"], "bad port spec 'eth0'"),
    (["flowtable", "add", "x"], "--devices"),
    (["daemon", "--punt-rate", "-5"], "--punt-rate '-5': expected a whole number >= 0"),
    (["daemon", "--punt-burst", "lots"], "--punt-burst 'lots': expected a whole number >= 0"),
    (["daemon", "--target", "tofino3"], "invalid choice: 'tofino3'"),
])
def test_bad_arguments_are_named(args, text):
    r = p4ft(*args)
    assert r.returncode != 0
    assert text in r.stderr


def test_cli_without_daemon_says_so():
    r = p4ft("--socket", "/tmp/p4ft-no-such.sock", "flow", "list")
    assert r.returncode == 1
    assert "cannot reach the p4ft daemon" in r.stderr


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace)")
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    yield NS
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def ruleset_in(ns):
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True,
                          text=True).stdout


def test_ruleset_setting_p4fts_own_label_bit_is_refused_with_the_rules_position(netns, tmp_path):
    f = tmp_path / "bad.nft"
    f.write_text("table ip x {\n  flowtable ft { hook ingress priority 0; devices = { a }; }\n"
                 "  chain y { type filter hook forward priority 0;\n    meta mark 3 ct label set 127\n"
                 "    flow add @ft\n  }\n}\n")
    r = p4ft("--socket", str(tmp_path / "s"), "daemon", "--netns", netns, "--port", "1=a",
             "--ruleset", str(f))
    assert r.returncode == 1
    assert f"{f}:4:17: this rule uses ct label 127, which p4ft keeps" in r.stderr
    assert ruleset_in(netns).strip() == ""
    # with p4ft's marks on other bits, the same file is the operator's to use
    r = p4ft("--socket", str(tmp_path / "s"), "daemon", "--netns", netns, "--port", "1=a", "--ruleset", str(f),
             "--ct-label-bits", "0-3", "--grpc-addr", "127.0.0.1:1")
    assert "no P4Runtime server at 127.0.0.1:1" in r.stderr


def test_a_punt_rate_without_a_burst_is_refused():
    r = p4ft("daemon", "--punt-rate", "10", "--punt-burst", "0", "--grpc-addr", "127.0.0.1:1")
    assert r.returncode != 0
    assert "a punt rate needs a burst of at least 1 packet" in r.stderr


def test_bad_label_bits_are_named():
    r = p4ft("daemon", "--ct-label-bits", "120-200")
    assert r.returncode != 0
    assert "--ct-label-bits: ct label bits '120-200': expected FIRST-LAST within 0-127" in r.stderr


def test_ruleset_the_kernel_refuses_is_reported_by_nft_with_the_operators_line(netns, tmp_path):
    f = tmp_path / "bad.nft"
    f.write_text("table ip x {\n  flowtable ft { hook ingress priority 0; devices = { a }; }\n"
                 "  chain y { type filter hook forward priority 0; flow add @ft }\n"
                 "  chain n { type nat hook postrouting priority 100; oifname a masqueradee }\n}\n")
    r = p4ft("--socket", str(tmp_path / "s"), "daemon", "--netns", netns, "--port", "1=a",
             "--ruleset", str(f))
    assert r.returncode == 1
    assert "nft rejected the ruleset" in r.stderr
    assert f"{f}:4:" in r.stderr
    assert ruleset_in(netns).strip() == ""


def test_flowtable_device_that_is_no_switch_port_is_refused(netns, tmp_path):
    f = tmp_path / "r.nft"
    f.write_text("table ip x {\n  flowtable ft { hook ingress priority 0; devices = { a, b }; }\n}\n")
    r = p4ft("--socket", str(tmp_path / "s"), "daemon", "--netns", netns, "--port", "1=a", "--ruleset", str(f))
    assert r.returncode == 1
    assert "['b'] are not switch ports" in r.stderr


def test_unreachable_switch_is_named(netns, tmp_path):
    f = tmp_path / "r.nft"
    f.write_text("table ip x {\n  flowtable ft { hook ingress priority 0; devices = { a }; }\n}\n")
    r = p4ft("--socket", str(tmp_path / "s"), "daemon", "--netns", netns, "--port", "1=a", "--ruleset", str(f),
             "--grpc-addr", "127.0.0.1:1")
    assert r.returncode == 1
    assert "no P4Runtime server at 127.0.0.1:1" in r.stderr
