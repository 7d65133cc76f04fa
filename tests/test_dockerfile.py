"""The image every pod in cluster/ runs, read from the Dockerfile (Docker is not needed): it
starts from the Ray the project pins, installs torch before the project so pip keeps it,
installs nothing unpinned, runs as Ray's non-root user, and bakes in no secret; .dockerignore
keeps local state out of the build context. Each test was seen failing on a broken copy."""

from __future__ import annotations

import re

from packaging.version import Version

from tests.cluster_manifests import (
    DOCKERFILE,
    RAY_UID,
    dockerfile_args,
    dockerfile_instructions,
    dockerignore_patterns,
    dockerignored,
    kuberay_resources,
    pip_installs,
    ray_requirement,
    ray_versions,
    substitute,
)

INSTRUCTIONS = dockerfile_instructions(DOCKERFILE)

PINNED = re.compile(r"[A-Za-z0-9_.-]+(\[[\w,-]*\])?==[\w.+!-]+")


def test_the_image_builds_on_the_pinned_ray():
    (base,) = (args for instruction, args in INSTRUCTIONS if instruction == "FROM")
    image = substitute(base, dockerfile_args(INSTRUCTIONS))
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311", image)
    assert match, f"the default base is {image!r}"
    assert Version(match[1]) in ray_requirement().specifier
    assert {v for _, doc in kuberay_resources() for v in ray_versions(doc)} == {match[1]}


def test_the_image_installs_torch_first_and_only_pinned_packages():
    """torch (pinned, from its index) before `pip install .`, so pip keeps it; nothing
    unpinned, no extra index where a public package of the same name could win."""
    installs = pip_installs(INSTRUCTIONS)
    targets = []
    for words in installs:
        assert "--extra-index-url" not in words, words
        options_with_values = {"--index-url", "-i", "-c", "--constraint"}
        skip = {i + 1 for i, w in enumerate(words) if w in options_with_values}
        packages = [w for i, w in enumerate(words) if i not in skip and not w.startswith("-")]
        for package in packages:
            local = re.fullmatch(r"\.(\[[\w,-]*\])?", package)
            assert local or PINNED.fullmatch(package), f"unpinned: pip install {package}"
        targets.append(packages)
    torch = next(i for i, p in enumerate(targets) if any(x.startswith("torch==") for x in p))
    project = next(i for i, p in enumerate(targets) if any(x.startswith(".") for x in p))
    assert torch < project, targets


def test_the_image_runs_as_a_non_root_user():
    users = [args for instruction, args in INSTRUCTIONS if instruction == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and int(user) == RAY_UID, users


def test_the_image_bakes_in_no_secret_and_copies_only_the_package():
    for instruction, arguments in INSTRUCTIONS:
        if instruction in ("ENV", "ARG"):
            name = re.split(r"[=\s]", arguments)[0]
            assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", name, re.I), name
        assert instruction != "ADD", "ADD fetches URLs and unpacks archives: use COPY"
    patterns = dockerignore_patterns()
    for path in (".venv", ".git", "runs", "work_dirs", "build", "dist", ".env", "tests"):
        assert dockerignored(path, patterns), f".dockerignore lets {path} into the context"
    for instruction, arguments in INSTRUCTIONS:
        if instruction == "COPY":
            *sources, _ = [w for w in arguments.split() if not w.startswith("--")]
            for source in sources:
                assert source not in (".", "./"), "COPY . copies the whole context"
                assert not dockerignored(source, patterns), f"{source} is .dockerignored"
