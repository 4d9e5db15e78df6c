"""Sandbox configs: loading, the errors a person reads, the dev config, and the round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from reach_sandbox.cli import check_config
from reach_sandbox.config import (
    BatchOrderConfig,
    ConfigError,
    SandboxConfig,
    dev_config,
    load_sandbox_config,
    parse_sandbox_config,
    write_sandbox_config,
)
from reach_sandbox.fault_specs import ErrorFault, RevokeFault

MINIMAL = {"admin_token": "a" * 20, "partners": [{"partner_id": "p", "secret": "s" * 32}]}


def test_dev_config_has_the_local_partner_and_tenants() -> None:
    config = dev_config("s" * 32, "a" * 20, "rk_key", [("tenant-1", "merchant-1")])
    assert [p.partner_id for p in config.partners] == ["reach-sync-dev"]
    assert [k.get_secret_value() for k in config.partners[0].static_keys] == ["rk_key"]
    assert [(t.id, t.external_id, t.partner_id) for t in config.tenants] == [
        ("tenant-1", "merchant-1", "reach-sync-dev")
    ]
    assert config.limits.max_batch_records == 1000
    assert config.limits.max_body_bytes == 5 * 1024 * 1024
    assert config.validation.mode == "sync"
    assert config.auth.accept_x_tenant_id is False
    assert dev_config("s" * 32, "a" * 20, None, []).partners[0].static_keys == ()


def test_a_written_config_loads_back_equal(tmp_path: Path) -> None:
    config = dev_config("s" * 32, "a" * 20, "rk_key", [("t", "m")]).model_copy(
        update={"faults": (ErrorFault(kind="error", status=503, rate=0.05),)}
    )
    path = tmp_path / "sandbox.yaml"
    write_sandbox_config(config, path)
    assert load_sandbox_config(path) == config
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({**MINIMAL, "surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"admin_token": "a"}, "partners: Field required"),
        ({**MINIMAL, "limits": {"max_batch_records": "many"}}, "limits.max_batch_records:"),
        (
            {**MINIMAL, "tenants": [{"id": "t", "external_id": "m", "partner_id": "nobody"}]},
            "unknown partner_id 'nobody'",
        ),
        (
            {**MINIMAL, "tenants": [{"id": "t", "external_id": "m", "partner_id": "p"}] * 2},
            "duplicate id 't'",
        ),
        ({**MINIMAL, "faults": [{"kind": "revoke"}]}, "faults.0.revoke"),
        ({**MINIMAL, "validation": {"mode": "lazy"}}, "validation.mode"),
        (
            {**MINIMAL, "batches": {"order": {"shuffle": "yes"}}},
            "batches.order.shuffle: Input should be a valid boolean",
        ),
        (
            {**MINIMAL, "batches": {"order": {"gather_seconds": -1}}},
            "batches.order.gather_seconds: Input should be greater than or equal to 0",
        ),
        (
            {**MINIMAL, "batches": {"order": {"gather_seconds": 30}}},
            "batches.order.gather_seconds: Input should be less than or equal to 5",
        ),
        (
            {**MINIMAL, "batches": {"order": {"seed": "abc"}}},
            "batches.order.seed: Input should be a valid integer",
        ),
        (
            {**MINIMAL, "batches": {"order": {"suffle": True}}},
            "batches.order.suffle: Extra inputs are not permitted",
        ),
        ([1, 2], "the top level must be a mapping"),
    ],
)
def test_errors_name_the_source_the_field_and_the_reason(data: object, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sandbox_config(data, "cfg.yaml")
    message = str(caught.value)
    assert message.startswith("cfg.yaml: ")
    assert complaint in message
    assert "\n" not in message


def test_batch_order_defaults_to_arrival_order_and_loads_from_a_file(tmp_path: Path) -> None:
    assert parse_sandbox_config(MINIMAL).batches.order == BatchOrderConfig(
        shuffle=False, seed=None, gather_seconds=0.25
    )
    path = tmp_path / "sandbox.yaml"
    path.write_text(
        "admin_token: aaaaaaaaaaaaaaaaaaaa\n"
        "partners: [{partner_id: p, secret: ssssssssssssssssssssssssssssssss}]\n"
        "batches:\n  order: {shuffle: true, seed: 42, gather_seconds: 0.1}\n"
    )
    config = load_sandbox_config(path)
    assert config.batches.order == BatchOrderConfig(shuffle=True, seed=42, gather_seconds=0.1)
    written = tmp_path / "written.yaml"
    write_sandbox_config(config, written)
    assert load_sandbox_config(written) == config


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_sandbox_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("admin_token: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_sandbox_config(broken)


def test_the_config_is_frozen() -> None:
    config = parse_sandbox_config(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        config.random_seed = 3
    assert isinstance(config, SandboxConfig)


def test_revoke_faults_need_exactly_one_target() -> None:
    assert RevokeFault(kind="revoke", partner_id="p").static_key is None
    with pytest.raises(ValueError, match="exactly one"):
        RevokeFault(kind="revoke", partner_id="p", static_key="k")


def test_the_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "sandbox.yaml"
    config = load_sandbox_config(example)
    check_config(config, str(example))  # its schemas compile, references resolve
    assert {s.name for s in config.schemas} == {"contacts"}
    assert [t.external_id for t in config.tenants] == ["merchant-1", "merchant-2", "merchant-3"]
