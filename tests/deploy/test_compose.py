"""deploy/docker-compose.yml and deploy/Dockerfile: the services and what they share, and every command they run is
one the real CLIs accept (logitstore's argparse parser, Ray's click commands), with the compose variables filled in.
``docker compose config`` validates the file when a compose client works here."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from logitstore.cli import build_parser

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
#: values for the variables the compose file requires; every other variable must have a default
REQUIRED = {"RAY_AUTH_TOKEN": "ab" * 32, "LOGITSTORE_API_KEY": "sample-key"}
SERVICES = {"ray-head", "ray-worker", "api", "precompute"}
RAY_SERVICES = ("ray-head", "ray-worker", "precompute")

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's substitution: ``$$``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``,
    ``${VAR?err}``. A variable that is neither set in ``env`` nor given a default is an error here (compose would
    substitute an empty string with a warning)."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        value = env.get(name)
        missing = not value if op in (":-", ":?") else value is None
        if not missing:
            return value  # type: ignore[return-value]
        if op in (":-", "-"):
            return arg
        raise KeyError(f"${{{name}}} is unset and has no default" + (f" ({arg})" if arg else ""))

    return _VARIABLE.sub(replace, text)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    return node


def load_compose(**env: str) -> dict[str, Any]:
    return interpolated(yaml.safe_load(COMPOSE.read_text()), {**REQUIRED, **env})


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def image_default(instruction: str) -> list[str]:
    """The exec-form ENTRYPOINT or CMD of the image (the last one, i.e. the final stage's)."""
    values = [args for name, args in dockerfile_instructions() if name == instruction]
    assert values, f"deploy/Dockerfile has no {instruction}"
    return json.loads(values[-1])


def as_argv(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def invocations(service: Mapping[str, Any]) -> list[list[str]]:
    """The programs a service's container runs, as argv lists.

    Compose semantics: an ``entrypoint`` replaces the image's and drops its CMD. A ``sh -c SCRIPT NAME`` entrypoint
    is followed line by line, with ``"$@"`` standing for the service's command."""
    if "entrypoint" in service:
        entrypoint = as_argv(service["entrypoint"])
        command = as_argv(service.get("command", []))
    else:
        entrypoint = image_default("ENTRYPOINT")
        command = as_argv(service.get("command", image_default("CMD")))
    if Path(entrypoint[0]).name in ("sh", "bash") and entrypoint[1].startswith("-") and "c" in entrypoint[1]:
        positional = [*entrypoint[3:], *command][1:]  # [$0, *$@] -> $@
        found = []
        for line in entrypoint[2].splitlines():
            words = shlex.split(line)
            if not words:
                continue
            if words[0] == "exec":
                words = words[1:]
            argv = [arg for word in words for arg in (positional if word == "$@" else [word])]
            assert not any("$" in word for word in argv), f"cannot follow the shell expansion in {line!r}"
            found.append(argv)
        return found
    return [entrypoint + command]


def healthcheck_invocations(service: Mapping[str, Any]) -> list[list[str]]:
    test = service.get("healthcheck", {}).get("test")
    if not test:
        return []
    if test[0] == "CMD":
        return [list(test[1:])]
    assert test[0] == "CMD-SHELL", test
    return [shlex.split(part) for part in test[1].split("|")]


def all_invocations(compose: Mapping[str, Any]) -> dict[str, list[list[str]]]:
    runs = {
        name: invocations(service) + healthcheck_invocations(service) for name, service in compose["services"].items()
    }
    runs["<image default>"] = [image_default("ENTRYPOINT") + image_default("CMD")]
    return runs


def parse_logitstore(argv: list[str]) -> Any:
    """``argv`` after ``logitstore`` through the real parser; a rejected flag fails with argparse's message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`logitstore {shlex.join(argv)}` is rejected by the CLI: {stderr.getvalue().strip()}")


def parse_ray(argv: list[str]) -> dict[str, Any]:
    """``argv`` after ``ray`` through Ray's own click command; returns the parsed options."""
    scripts = pytest.importorskip("ray.scripts.scripts")
    import click

    command = scripts.cli.commands.get(argv[0])
    assert command is not None, f"`ray {argv[0]}` is not a Ray command"
    try:
        return command.make_context(f"ray {argv[0]}", list(argv[1:])).params
    except click.ClickException as exc:
        pytest.fail(f"`ray {shlex.join(argv)}` is rejected by Ray: {exc.format_message()}")


def mounts(service: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """target path -> (source, read_only) of the short-syntax volumes of a service."""
    found = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        found[target] = (source, "ro" in mode)
    return found


def mounted_at(service: Mapping[str, Any], path: str) -> tuple[str, str, bool] | None:
    """(target, source, read_only) of the mount of ``service`` holding ``path`` (the deepest one)."""
    holders = [target for target in mounts(service) if path == target or path.startswith(target.rstrip("/") + "/")]
    if not holders:
        return None
    target = max(holders, key=len)
    return (target, *mounts(service)[target])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_services_and_the_job_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["precompute"]["profiles"] == ["job"]  # `docker compose up` does not start a job
    assert all("profiles" not in services[name] for name in SERVICES - {"precompute"})


def test_every_variable_has_a_default_or_is_one_of_the_required_secrets() -> None:
    for name in REQUIRED:
        with pytest.raises(KeyError, match=name):
            interpolated(yaml.safe_load(COMPOSE.read_text()), {k: v for k, v in REQUIRED.items() if k != name})
    load_compose()  # nothing else is needed


def test_workers_reserve_nvidia_gpus_with_configurable_count_and_replicas() -> None:
    def deploy(compose: dict[str, Any]) -> dict[str, Any]:
        return compose["services"]["ray-worker"]["deploy"]

    default = deploy(load_compose())
    (device,) = default["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert str(device["count"]) == "all" and int(default["replicas"]) == 1
    custom = deploy(load_compose(GPUS_PER_WORKER="2", RAY_WORKERS="3"))
    assert custom["resources"]["reservations"]["devices"][0]["count"] == "2" and custom["replicas"] == "3"
    # nothing else reserves GPUs: the head and the driver must never hold one
    assert all("deploy" not in load_compose()["services"][name] for name in SERVICES - {"ray-worker"})


def test_the_store_volume_is_shared_and_read_only_for_the_api(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "store" in compose["volumes"]
    assert mounts(services["api"])["/store"] == ("store", True)
    for name in RAY_SERVICES:
        assert mounts(services[name])["/store"] == ("store", False), name


def test_every_logitstore_command_is_accepted_by_the_cli(compose: dict[str, Any]) -> None:
    checked = {
        name: [parse_logitstore(argv[1:]).command for argv in runs if argv[0] == "logitstore"]
        for name, runs in all_invocations(compose).items()
    }
    assert checked["api"] == ["serve"] and checked["precompute"] == ["precompute"]
    assert checked["<image default>"] == ["serve"]


def test_every_ray_command_is_accepted_by_ray(compose: dict[str, Any]) -> None:
    checked = {
        name: [argv[1] for argv in runs if argv[0] == "ray" and parse_ray(argv[1:]) is not None]
        for name, runs in all_invocations(compose).items()
    }
    assert checked["ray-head"] == ["start", "status"] and checked["ray-worker"] == ["start", "status"]
    assert checked["precompute"] == ["start"]


def test_the_job_joins_the_head_and_writes_where_every_node_sees_it(compose: dict[str, Any]) -> None:
    services = compose["services"]
    (head,) = [parse_ray(argv[1:]) for argv in invocations(services["ray-head"])]
    assert head["head"] and head["block"] and head["num_gpus"] == 0
    address = f"ray-head:{head['port']}"
    (worker,) = [parse_ray(argv[1:]) for argv in invocations(services["ray-worker"])]
    assert worker["address"] == address and worker["block"]
    # the driver's container joins as a node (ray.init with host:port needs a local raylet) that takes no actor
    join, run = invocations(services["precompute"])
    node = parse_ray(join[1:])
    assert (
        join[:2] == ["ray", "start"] and node["address"] == address and (node["num_cpus"], node["num_gpus"]) == (0, 0)
    )
    job = parse_logitstore(run[1:])
    assert job.ray_address == address
    # actors on the workers load the teacher and write shards: same paths there as in the driver (WORKERS.md)
    for path, option in ((job.out, "--out"), (job.teacher, "--teacher")):
        seen = {name: mounted_at(services[name], path) for name in ("precompute", "ray-worker")}
        assert seen["precompute"] is not None and seen["precompute"] == seen["ray-worker"], (option, path, seen)
    assert mounted_at(services["precompute"], job.data) is not None
    assert mounted_at(services["precompute"], job.out) == ("/store", "store", False)


def test_ray_nodes_and_the_driver_share_one_auth_token(compose: dict[str, Any]) -> None:
    for name in RAY_SERVICES:
        environment = compose["services"][name]["environment"]
        assert environment["RAY_AUTH_MODE"] == "token", name
        assert environment["RAY_AUTH_TOKEN"] == REQUIRED["RAY_AUTH_TOKEN"], name
    assert compose["services"]["api"]["environment"]["LOGITSTORE_API_KEY"] == REQUIRED["LOGITSTORE_API_KEY"]


def test_the_api_healthcheck_polls_healthz_on_the_port_it_serves(compose: dict[str, Any]) -> None:
    (healthcheck,) = [args for name, args in dockerfile_instructions() if name == "HEALTHCHECK"]
    probe = json.loads(healthcheck.split(" CMD ", 1)[1])
    port = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", " ".join(probe))
    assert probe[0] == "python" and port is not None
    assert "healthcheck" not in compose["services"]["api"]  # the image's applies
    for runs in (invocations(compose["services"]["api"]), [image_default("ENTRYPOINT") + image_default("CMD")]):
        assert parse_logitstore(runs[0][1:]).port == int(port.group(1))


def test_the_image_installs_every_package_and_the_extras_the_services_need() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    instructions = dockerfile_instructions()
    copied = {
        Path(src).name
        for name, args in instructions
        if name == "COPY" and "--from" not in args
        for src in args.split()[:-1]
    }
    assert folders | {"pyproject.toml", project["project"]["readme"]} <= copied
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert all(f"!{folder}/" in ignore for folder in folders) and "!pyproject.toml" in ignore
    extras = re.findall(r'"/src\[([a-z,]+)\]"', " ".join(args for name, args in instructions if name == "RUN"))
    assert extras and set(extras[0].split(",")) == {"workers", "server"}
    assert set(extras[0].split(",")) <= set(project["project"]["optional-dependencies"])
    assert any(name == "USER" and args.strip() not in ("root", "0") for name, args in instructions)


def compose_client() -> list[str] | None:
    """``docker compose`` or a standalone ``docker-compose`` of Compose v2 (v1 knows no top-level ``name``)."""
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(candidate[0]) is None:
            continue
        try:
            probe = subprocess.run([*candidate, "version", "--short"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and not probe.stdout.strip().lstrip("v").startswith("1."):
            return candidate
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no Compose v2 client: `docker compose version` fails and there is no docker-compose >= 2")
    empty_env_file = tmp_path / "empty.env"  # so that a deploy/.env on this machine cannot fill the secrets
    empty_env_file.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in REQUIRED}
    argv = [*client, "--env-file", str(empty_env_file), "-f", str(COMPOSE), "--profile", "job", "config", "--quiet"]
    ok = subprocess.run(argv, cwd=DEPLOY, env={**base, **REQUIRED}, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(argv, cwd=DEPLOY, env=base, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "RAY_AUTH_TOKEN" in missing.stderr
