"""What a tenant's Dockerfile may not ask of the build host's network, found before anything is built.

`ADD <url>` is fetched by the engine itself, in the build host's own network namespace, outside the
network RUN steps are confined to: it could read the host's loopback services or a cloud metadata
endpoint into the image. `RUN --network=host` (honoured by recent buildah and by BuildKit) would put a
step back on the host's network. Both are refused; everything else is left to the engine.

The checks err towards refusing. The Dockerfile is read the way engines read it (parser directives,
line continuations, comments inside continuations, JSON-array arguments, `--flag` options, ONBUILD),
once with each escape character an engine could use, and every physical line is also read as an
instruction of its own, so neither an `# escape=` directive an engine honours differently nor a heredoc
body (an instruction to an engine without heredoc support) can hide an ADD from the checks.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

ESCAPES = ("\\", "`")
# A scheme (http, https, git, ftp, ...) or git's scp-like form (git@host:path): the engine fetches both.
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.\-]*://|[\w.\-]+@[\w.\-]+:)", re.IGNORECASE)
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.*?)\s*$")
_KEYWORD = re.compile(r"^\s*([A-Za-z]+)(?:\s+(.*))?$", re.DOTALL)
# RUN's own network modes that keep the step on the network the build was given.
RUN_NETWORKS_ALLOWED = ("none", "default")
URL_ADVICE = "download it in a RUN step instead: RUN curl -fsSLo /x <url>"


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    flags: tuple[str, ...]
    args: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def escape_directive(text: str) -> str:
    """The escape character the `# escape=` parser directive sets, or the default backslash."""
    for raw in text.splitlines():
        match = _DIRECTIVE.match(raw.strip())
        if match is None:
            break
        if match.group(1).lower() == "escape" and match.group(2) in ESCAPES:
            return match.group(2)
    return "\\"


def logical_lines(text: str, escape: str) -> list[tuple[int, str]]:
    """(first line number, text) of each instruction, continuations joined as engines join them."""
    out: list[tuple[int, str]] = []
    current: str | None = None
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if current is None:
            if not stripped or stripped.startswith("#"):
                continue
            current, start = "", number
        elif not stripped or stripped.startswith("#"):
            # Engines drop comments and empty lines inside a continuation and carry on with the next line.
            continue
        body = raw.rstrip()
        if body.endswith(escape):
            current += body[: -len(escape)]
            continue
        out.append((start, current + body))
        current = None
    if current:
        out.append((start, current))
    return out


def _words(rest: str) -> list[str]:
    try:
        return shlex.split(rest, posix=True)
    except ValueError:
        return rest.split()


def parse_instruction(line: int, text: str) -> Instruction | None:
    match = _KEYWORD.match(text)
    if match is None:
        return None
    keyword, rest = match.group(1).upper(), (match.group(2) or "").strip()
    if keyword == "ONBUILD":
        return parse_instruction(line, rest)
    flags: list[str] = []
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.lstrip()
    args: list[str] | None = None
    if rest.startswith("["):
        try:
            decoded = json.loads(rest)
        except ValueError:
            decoded = None
        if isinstance(decoded, list) and all(isinstance(item, str) for item in decoded):
            args = decoded
    return Instruction(line, keyword, tuple(flags), tuple(args if args is not None else _words(rest)))


def instructions(text: str, escape: str | None = None) -> list[Instruction]:
    escape = escape or escape_directive(text)
    parsed = (parse_instruction(line, body) for line, body in logical_lines(text, escape))
    return [instruction for instruction in parsed if instruction is not None]


def _flag(flags: tuple[str, ...], name: str) -> str | None:
    for flag in flags:
        key, sep, value = flag.partition("=")
        if key.lower() == f"--{name}":
            return value if sep else ""
    return None


def _unquoted(word: str) -> str:
    """The word as an engine's word processing may leave it: quotes and escape characters gone
    (with either escape character, h\\ttp:// and h`ttp:// are http://)."""
    return re.sub(r"[\\`'\"]", "", word)


def refusals_of(instruction: Instruction) -> list[Refusal]:
    found: list[Refusal] = []
    if instruction.keyword == "ADD":
        sources = instruction.args[:-1] if len(instruction.args) > 1 else instruction.args
        for source in sources:
            if source.startswith("<<"):
                continue  # a heredoc: the content is in the Dockerfile itself
            if _REMOTE.match(_unquoted(source)):
                found.append(
                    Refusal(
                        instruction.line,
                        f"ADD {source}: ADD of a URL is fetched by the build host, outside the build's network; "
                        f"{URL_ADVICE}",
                    )
                )
            elif "$" in source:
                found.append(
                    Refusal(
                        instruction.line,
                        f"ADD {source}: ADD sources must not use variables, which could expand to a URL the build "
                        "host would fetch; name the file (or use COPY), or download it in a RUN step",
                    )
                )
    elif instruction.keyword == "RUN":
        network = _flag(instruction.flags, "network")
        if network is not None and network.lower() not in RUN_NETWORKS_ALLOWED:
            found.append(
                Refusal(
                    instruction.line,
                    f"RUN --network={network}: RUN steps use the build's own network (builds reach the internet, "
                    "not the build host or private networks); remove --network",
                )
            )
    return found


def name_problem(name: str) -> str | None:
    """Why a Dockerfile of this name cannot be checked, or None. Podman runs a Containerfile named
    `*.in` through the C preprocessor first: its `#include`s (comments to everyone else) would bring in
    instructions no check saw, or files from outside the build context."""
    if name.lower().endswith(".in"):
        return f"{name}: Dockerfiles named *.in are preprocessed by the engine (#include); rename it"
    return None


def network_refusals(text: str) -> list[Refusal]:
    """What in this Dockerfile would reach the build host's network; empty when nothing does."""
    seen: dict[tuple[int, str], Refusal] = {}
    candidates: list[Instruction] = []
    for escape in dict.fromkeys((escape_directive(text), *ESCAPES)):
        candidates.extend(instructions(text, escape))
    for number, raw in enumerate(text.splitlines(), 1):
        single = parse_instruction(number, raw.strip())
        if single is not None:
            candidates.append(single)
    for instruction in candidates:
        for refusal in refusals_of(instruction):
            seen.setdefault((refusal.line, refusal.message), refusal)
    return sorted(seen.values(), key=lambda refusal: refusal.line)
