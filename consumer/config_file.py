"""Reading a sync definition file: YAML, ``${VAR}`` references, secrets, one problem per line.

``${VAR}`` and ``${VAR:-default}`` are replaced from the environment; fields given as
``<name>_env`` or ``<name>_file`` are read from there into the model's secrets (a secret written
in the file is refused). Every problem names the file, the line and the field, and all of them
are reported at once, before any work starts (DefinitionError).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from consumer.config import SyncDefinition
from consumer.errors import DefinitionError

__all__ = ["load_definition"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _secret_from(
    env: Mapping[str, str], name_env: str | None, name_file: Path | None, what: str
) -> SecretStr:
    if name_env is not None:
        value = env.get(name_env)
        if not value:
            raise ValueError(f"{what}: environment variable {name_env} is not set")
        return SecretStr(value)
    if name_file is not None:
        try:
            return SecretStr(name_file.read_text().strip())
        except OSError as exc:
            raise ValueError(f"{what}: cannot read {name_file}: {exc.strerror}") from exc
    raise ValueError(f"{what}: set one of *_env or *_file")


def _interpolate(node: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of the parsed YAML."""
    if isinstance(node, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return match.group(0)

    return _ENV_REF.sub(replace, node)


# Fields given in the file as <name>_env or <name>_file, resolved into SecretStr <name>.
_SECRET_FIELDS = {
    ("source", "database"): "dsn",
    ("destination", "auth"): "secret",
    ("redis",): "url",
    ("source", "kafka", "schema_registry"): "basic_auth_user_info",
}


def _resolve_secrets(
    data: dict[str, Any], env: Mapping[str, str], base: Path, problems: list[str]
) -> None:
    for location, name in _SECRET_FIELDS.items():
        node: Any = data
        for part in location:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        path = ".".join(location)
        if name in node:
            problems.append(
                f"{path}.{name}: secrets are not allowed in the file; use {name}_env or {name}_file"
            )
            node.pop(name)
        env_name, file_name = node.pop(f"{name}_env", None), node.pop(f"{name}_file", None)
        if env_name is None and file_name is None:
            continue  # the model reports the missing field
        file_path = None if file_name is None else (base / str(file_name))
        try:
            node[name] = _secret_from(env, env_name, file_path, f"{path}.{name}").get_secret_value()
        except ValueError as exc:
            problems.append(str(exc))
            # Already reported with its reason; keep the model from adding "missing" for it.
            node[name] = "<unresolved>"


def _error_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif str(item).startswith("function-"):
            continue  # pydantic's validator names are noise to a reader of the YAML
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def load_definition(path: Path, env: Mapping[str, str] | None = None) -> SyncDefinition:
    """Read, interpolate, resolve secrets and validate; raise DefinitionError with every problem,
    each with the line of the file it is about where that can be told."""
    env = os.environ if env is None else env
    source = str(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except OSError as exc:
        raise DefinitionError(source, [f"cannot read: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise DefinitionError(source, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise DefinitionError(source, ["(top level): must be a mapping"])
    problems = _duplicate_keys(tree, "")
    data = _interpolate(raw, env, "", problems)
    _resolve_secrets(data, env, path.parent, problems)
    try:
        definition = SyncDefinition.model_validate(data)
    except ValidationError as exc:
        # A field whose ${VAR} is not set is reported as that; what the model then says of the
        # placeholder left in its place ("should match pattern ...") is noise.
        unset = {problem.split(": ", 1)[0] for problem in problems}
        # A validator's own message reads as written, without pydantic's "Value error, ".
        found = [
            (_error_path(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()
        ]
        problems += [f"{where}: {msg}" for where, msg in found if where not in unset]
        raise DefinitionError(source, problems, _lines(tree, problems)) from exc
    if problems:
        raise DefinitionError(source, problems, _lines(tree, problems))
    return definition


def _duplicate_keys(node: yaml.Node | None, path: str) -> list[str]:
    """A key given twice in one mapping: YAML keeps the last silently, so an edit that adds a
    field already set further up would quietly win or lose. Refused, naming both lines."""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(getattr(key_node, "value", ""))
            where = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in first:
                problems.append(f"{where}: given twice (lines {first[key]} and {line}); keep one")
            else:
                first[key] = line
            problems += _duplicate_keys(value_node, where)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{path}[{index}]")
    return problems


def located(path: Path, problems: list[str]) -> DefinitionError:
    """Problems found after loading (checks against the database), placed in the file like
    the loader's own: ``file:line: path: reason``."""
    try:
        tree = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        tree = None
    return DefinitionError(str(path), problems, _lines(tree, problems))


def _lines(tree: yaml.Node | None, problems: list[str]) -> list[int | None]:
    """The line of the file each problem's field path is on (of its nearest existing parent
    when the field itself is missing); None where no line can be told."""
    return [_line_of(tree, _loc(problem.split(": ", 1)[0])) for problem in problems]


def _loc(path: str) -> list[str | int]:
    """``resources.customers.triggers[0].table`` as keys and indexes."""
    return [int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]


def _line_of(node: yaml.Node | None, loc: list[str | int]) -> int | None:
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(
                (kv for kv in node.value if getattr(kv[0], "value", None) == str(key)), None
            )
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]  # the key's line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                break
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line
