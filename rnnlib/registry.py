"""A model registry on the object store, without a server: numbered versions and aliases.

Layout under the registry URI (a local folder or an s3:// prefix)::

    <name>/<n>/CLAIM                       created if absent: number n is taken (n = 1, 2, 3, ...)
    <name>/<n>/model/                      a copy of the bundle (weights.pt, bundle.json)
    <name>/<n>/version.json                written last: version n exists only once this does
    <name>/aliases/<alias>/<seq:06d>.json  one file per move of the alias, created if absent;
                                           the highest seq is where the alias points now

Every write that could race is a create-if-absent (S3 ``IfNoneMatch="*"``, a hard link locally),
as ``_SUCCESS`` is for published runs: two registers never share a number (the loser of a CLAIM
takes the next one), and two promotes of one alias never both land (the loser of a seq is told,
nothing is overwritten). A register that crashed after its CLAIM leaves a number without
``version.json``: readers skip it, ``list`` shows it as incomplete.

References, resolved against ``$RNNJOBS_REGISTRY``: ``models://NAME/VERSION`` (one version, which
never changes) and ``models://NAME@ALIAS`` (the version the alias points at when resolved).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import storage
from .errors import BundleError, UserError

SCHEME = "models://"
ENV = "RNNJOBS_REGISTRY"
CLAIM, VERSION, MODEL, ALIASES = "CLAIM", "version.json", "model", "aliases"
DEFAULT_ALIAS = "champion"
REF_SYNTAX = "models://NAME@ALIAS (e.g. models://forecaster@champion) or models://NAME/VERSION (e.g. models://forecaster/3)"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # one folder name: no '/', no '..', not hidden
_NUMBER = re.compile(r"[1-9][0-9]{0,8}")
_SEQ_FILE = re.compile(r"([0-9]{6,9})\.json")


class PromoteConflict(UserError):
    """The alias was moved by someone else: since the caller looked (``expect``), or at the same moment."""


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()  # promote(expect=ANY): move the alias wherever it points now


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Names and references


def name_problem(value: str, what: str = "model name") -> str | None:
    """Why ``value`` cannot be a model name (or an alias, with ``what="alias"``), or None."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        return (f"{what} {value!r} is not a single folder name: use 1-128 letters, digits, '-', '_' or '.', "
                "starting with a letter or digit")
    if what == "alias" and value.isdigit():
        return f"alias {value!r} is all digits, which would read as a version number; name it with a letter"
    return None


def check_name(value: str, what: str = "model name") -> str:
    if problem := name_problem(value, what):
        raise UserError(problem)
    return value


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of ``version`` and ``alias`` is set."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.name}" + (f"@{self.alias}" if self.alias else f"/{self.version}")


def is_ref(uri: object) -> bool:
    return isinstance(uri, str) and uri.startswith(SCHEME)


def parse_ref(ref: str, *, scheme: bool = True) -> Ref:
    """``models://NAME@ALIAS`` or ``models://NAME/VERSION`` as a ``Ref``; a ``UserError`` saying the
    syntax otherwise. ``scheme=False`` also takes the short forms ``NAME@ALIAS`` and ``NAME/VERSION``."""
    parsed = _parse(str(ref), scheme)
    if isinstance(parsed, str):
        raise UserError(f"{str(ref)!r} {parsed}")
    return parsed


def ref_problem(ref: str) -> str | None:
    """Why ``ref`` is not a reference, as a phrase to follow it (for config checks), or None."""
    parsed = _parse(str(ref), True)
    return parsed if isinstance(parsed, str) else None


def _parse(ref: str, scheme: bool) -> Ref | str:
    """The ``Ref``, or why there is none (a phrase that follows the reference)."""
    prefix = SCHEME if scheme else ""
    body = ref[len(SCHEME):] if ref.startswith(SCHEME) else None if scheme else ref
    if body is None:
        return f"is not a model reference; write {REF_SYNTAX}"
    name, sep, alias = body.partition("@")
    if sep:
        if alias.isdigit():
            return f"has a version after '@', which takes an alias; for version {alias} write {prefix}{name}/{alias}"
        if problem := name_problem(name) or name_problem(alias, "alias"):
            return f"is not a model reference: {problem}"
        return Ref(name, alias=alias)
    name, sep, version = body.partition("/")
    if problem := name_problem(name):
        return f"is not a model reference: {problem}; write {REF_SYNTAX}"
    if not sep:
        return f"names no version or alias; write {prefix}{name}@{DEFAULT_ALIAS} or {prefix}{name}/VERSION"
    if not _NUMBER.fullmatch(version):
        return f"has {version!r} where a version number (1, 2, 3, ...) goes; write {REF_SYNTAX}"
    return Ref(name, version=int(version))


def registry_uri(explicit: str | None = None, flag: str | None = None) -> str:
    """The registry's URI: ``explicit`` (a flag), else ``$RNNJOBS_REGISTRY``; a ``UserError`` naming
    both (``flag``, the option a user could pass) when neither is set."""
    uri = explicit or os.environ.get(ENV)
    if not uri:
        how = f"pass {flag} URI or set {ENV}" if flag else f"set {ENV}"
        raise UserError(f"no model registry: {how} to the registry's local folder or s3://bucket/prefix "
                        f"(e.g. export {ENV}=s3://my-bucket/models)")
    key = flag or ENV
    storage.refuse_credentials(uri, key)
    if problem := storage.uri_problem(uri):
        raise UserError(f"{key}: {uri!r} {problem}")
    return uri


def resolve(ref: str, endpoint_url: str | None = None) -> tuple[str, dict]:
    """``(bundle URI, version info)`` of a ``models://`` reference, against ``$RNNJOBS_REGISTRY``.

    The version info is version.json with ``ref`` (the reference as given) added."""
    parse_ref(ref)  # its syntax first: a typo is named before the environment is
    try:
        uri = registry_uri()
    except UserError as e:
        raise UserError(f"{ref}: {e}") from None
    return Registry(uri, endpoint_url).resolve(ref)


# ---------------------------------------------------------------------------------------------
# The registry


@dataclass
class Listing:
    """What one listing of ``<name>/`` found: numbers taken, versions complete, alias seqs."""

    taken: set[int] = field(default_factory=set)
    complete: set[int] = field(default_factory=set)
    aliases: dict[str, list[int]] = field(default_factory=dict)

    @property
    def incomplete(self) -> set[int]:
        return self.taken - self.complete


def _store_errors() -> tuple[type[Exception], ...]:
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


class Registry:
    """Models under ``uri`` (a local folder or s3:// prefix), read and written through rnnlib.storage."""

    def __init__(self, uri: str, endpoint_url: str | None = None):
        storage.refuse_credentials(uri, "registry")
        if problem := storage.uri_problem(uri):
            raise UserError(f"registry {uri!r} {problem}")
        self.uri = str(uri).rstrip("/") or str(uri)
        self.endpoint_url = endpoint_url

    def __repr__(self) -> str:
        return f"Registry({storage.redact(self.uri)!r})"

    def _at(self, *parts: object) -> str:
        return storage.join(self.uri, *map(str, parts))

    def bundle_uri(self, name: str, version: int) -> str:
        return self._at(name, version, MODEL)

    def _io(self, fn, *args, where: str | None = None, **kwargs):
        """``fn(*args, endpoint_url=..., **kwargs)`` (a rnnlib.storage call), with the store's failures
        (no bucket, access denied, unreachable) as a ``UserError`` about ``where`` (default: the first arg)."""
        try:
            return fn(*args, endpoint_url=self.endpoint_url, **kwargs)
        except _store_errors() as e:
            raise UserError(storage.access_error(where or args[0], e, self.endpoint_url)) from None

    # -- reading ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Model names in the registry (folders with a valid name), sorted."""
        found = self._io(storage.list_folders, self.uri)
        return [n for n in found if name_problem(n) is None]

    def scan(self, name: str) -> Listing:
        """One recursive listing of ``<name>/``: version numbers taken and complete, alias seqs."""
        check_name(name)
        base = self._at(name)
        files = self._io(storage.list_files, base, recursive=True, missing_ok=True)  # [] for a name never registered
        out = Listing()
        for uri, _, _ in files:
            parts = uri[len(base) + 1:].split("/")
            if _NUMBER.fullmatch(parts[0]):
                n = int(parts[0])
                out.taken.add(n)  # any file under <n>/ takes the number, CLAIM or not
                if parts[1:] == [VERSION]:
                    out.complete.add(n)
            elif parts[0] == ALIASES and len(parts) == 3 and name_problem(parts[1], "alias") is None:
                if m := _SEQ_FILE.fullmatch(parts[2]):
                    out.aliases.setdefault(parts[1], []).append(int(m.group(1)))
        for seqs in out.aliases.values():
            seqs.sort()
        return out

    def _json(self, uri: str) -> dict:
        raw = self._io(storage.read_bytes, uri)
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise UserError(f"{storage.redact(uri)}: not valid JSON ({e}); the registry entry is damaged") from None
        if not isinstance(value, dict):
            raise UserError(f"{storage.redact(uri)}: not a JSON object; the registry entry is damaged")
        return value

    def version(self, name: str, version: int, listing: Listing | None = None) -> dict:
        """version.json of ``name``'s version ``version``; a ``UserError`` saying what exists otherwise."""
        check_name(name)
        uri = self._at(name, version, VERSION)
        if listing is not None:
            if version not in listing.complete:
                raise UserError(self._missing(name, version, listing))
        elif self._io(storage.kind, uri) != "file":  # one HEAD when it is there
            raise UserError(self._missing(name, version, self.scan(name)))
        info = self._json(uri)
        if info.get("name") != name or info.get("version") != version:
            raise UserError(f"{storage.redact(uri)}: names {info.get('name')!r} version {info.get('version')!r}, "
                            f"not {name} version {version}; the registry entry was edited or copied")
        return info

    def _missing(self, name: str, version: int, listing: Listing) -> str:
        where = f"{name}/{version} in the registry {storage.redact(self.uri)}"
        if not listing.taken:
            return self._unknown(name)
        if version in listing.taken:
            return (f"{where} is incomplete: its number was claimed but it has no {VERSION} (a register that "
                    "crashed or is still running); use another version")
        have = sorted(listing.complete)
        return f"{where}: no such version; {name} has versions {_ranges(have) if have else 'none complete'}"

    def require(self, name: str) -> Listing:
        """``scan(name)``, or a ``UserError`` listing the names there are when ``name`` was never registered."""
        listing = self.scan(name)
        if not listing.taken:
            raise UserError(self._unknown(name))
        return listing

    def _unknown(self, name: str) -> str:
        names = self.names()
        return (f"no model named {name!r} in the registry {storage.redact(self.uri)}; "
                + (f"it holds: {', '.join(names[:20])}" + (" ..." if len(names) > 20 else "") if names
                   else "it holds no models (is the registry URI right?)")
                + f" (register one with `rnnjobs models register {name} BUNDLE`)")

    def versions(self, name: str, listing: Listing | None = None) -> list[dict]:
        """Every version number taken, ascending: version.json for a complete version; for an
        incomplete one ``{"version": n, "incomplete": True, "claimed": when}``."""
        listing = listing or self.scan(name)
        out = []
        for n in sorted(listing.taken):
            if n in listing.complete:
                out.append(self.version(name, n, listing))
            else:
                claim_uri = self._at(name, n, CLAIM)
                try:
                    claimed = self._json(claim_uri).get("claimed")
                except UserError:
                    claimed = None
                out.append({"name": name, "version": n, "incomplete": True, "claimed": claimed})
        return out

    def alias_history(self, name: str, alias: str, listing: Listing | None = None) -> list[dict]:
        """Every move of ``name@alias``, oldest first (empty if it was never set)."""
        check_name(alias, "alias")
        listing = listing or self.scan(name)
        return [self._json(self._move_uri(name, alias, s)) for s in listing.aliases.get(alias, [])]

    def alias_target(self, name: str, alias: str, listing: Listing | None = None) -> dict | None:
        """The latest move of ``name@alias`` (its ``version`` is where it points), or None."""
        check_name(alias, "alias")
        listing = listing or self.scan(name)
        seqs = listing.aliases.get(alias)
        return self._json(self._move_uri(name, alias, seqs[-1])) if seqs else None

    def aliases(self, name: str, listing: Listing | None = None) -> dict[str, dict]:
        """Each alias of ``name`` with its latest move."""
        listing = listing or self.scan(name)
        return {a: self.alias_target(name, a, listing) for a in sorted(listing.aliases)}

    def note(self, name: str, version: int, kind: str, payload: dict) -> str:
        """Write a record beside a version (``<name>/<version>/<kind>/<when>.json``, e.g. a gate's
        decision with its figures); return its URI. Records are never overwritten."""
        self.version(name, version)
        uri = self._at(name, version, kind, f"{now().replace(':', '')}-{uuid.uuid4().hex[:6]}.json")
        self._io(storage.write_bytes, uri, json.dumps(payload, indent=1, allow_nan=False).encode())
        return uri

    def notes(self, name: str, version: int, kind: str) -> list[dict]:
        """The records ``note`` wrote beside a version, oldest first."""
        found = self._io(storage.list_files, self._at(name, version, kind), missing_ok=True)
        return [self._json(uri) for uri, _, _ in found if uri.endswith(".json")]

    def find(self, name: str, weights_sha256: str) -> int | None:
        """The newest complete version of ``name`` holding these weights, or None."""
        found = [v["version"] for v in self.versions(name)
                 if not v.get("incomplete") and v.get("weights_sha256") == weights_sha256]
        return max(found, default=None)

    def _move_uri(self, name: str, alias: str, seq: int) -> str:
        return self._at(name, ALIASES, alias, f"{seq:06d}.json")

    def resolve(self, ref: str | Ref) -> tuple[str, dict]:
        """``(bundle URI, version.json + {"ref": ...})`` of a reference; a ``UserError`` that says what
        to do for an unknown name, an alias never set, or a version missing or incomplete."""
        r = ref if isinstance(ref, Ref) else parse_ref(ref)
        try:
            listing = self.require(r.name)
        except UserError as e:
            raise UserError(f"{r}: {e}") from None
        version = r.version
        if r.alias is not None:
            move = self.alias_target(r.name, r.alias, listing)
            if move is None:
                set_ = sorted(listing.aliases)
                raise UserError(f"{r}: alias {r.alias!r} of {r.name} was never set"
                                + (f" (set: {', '.join(set_)})" if set_ else " (it has no aliases yet)")
                                + f"; point it at a version with `rnnjobs models promote {r.name} VERSION "
                                  f"--alias {r.alias}`, or use models://{r.name}/VERSION")
            version = move.get("version")
            if not isinstance(version, int) or isinstance(version, bool):
                raise UserError(f"{r}: the alias's latest move names no version; the registry entry is damaged")
        try:
            info = self.version(r.name, version, listing)
        except UserError as e:
            raise UserError(f"{r}: {e}") from None
        return self.bundle_uri(r.name, version), {**info, "ref": str(r)}

    # -- writing ------------------------------------------------------------------------------

    def register(self, name: str, bundle_uri: str, *, data: dict | None = None) -> dict:
        """Copy the bundle at ``bundle_uri`` into the next free version of ``name``; return its version.json.

        The bundle is read once into a temporary folder and loaded from there (every check of
        ``checkpoint.load_bundle``), so what is uploaded is exactly what was checked. ``data``: any
        JSON object recorded as is (e.g. a fingerprint of the training data)."""
        check_name(name)
        data_json = _plain_object(data, "data")
        # where it came from, for people: a local path made absolute, a URI without user info
        source = storage.redact(str(bundle_uri)) if "://" in str(bundle_uri) else str(Path(bundle_uri).resolve())
        with tempfile.TemporaryDirectory(prefix="rnnjobs-register-") as tmp:
            stage = Path(tmp) / MODEL
            meta = self._stage(bundle_uri, stage)
            n = self._claim(name, source)
            target = self.bundle_uri(name, n)
            self._io(storage.upload_dir, stage, target, where=target)
            metrics = meta.get("metrics") or {}
            final = metrics.get("final")
            if final is None:  # bundles written by rnnlib.fit keep the final metrics at the top level
                final = {k: v for k, v in metrics.items() if k not in ("history", "config", "run")} or None
            info = {"name": name, "version": n, "created": now(), "source": source, "task": meta["task"],
                    "weights_sha256": meta["weights_sha256"], "model": meta["model"],
                    "metrics": final, "run": metrics.get("run"), "data": data_json}
            uri = self._at(name, n, VERSION)
            body = json.dumps(info, indent=1, allow_nan=True).encode()
            if not self._io(storage.create_if_absent, uri, body):
                raise UserError(f"{storage.redact(uri)} appeared while this register held number {n}: "
                                "something other than rnnjobs writes into the registry; check it")
        return info

    def _stage(self, bundle_uri: str, stage: Path) -> dict:
        """Copy the bundle's two files into ``stage`` and load them; its bundle.json, or a ``BundleError``
        naming ``bundle_uri`` and what is wrong."""
        from .bundle import META, WEIGHTS, load_bundle

        src = str(bundle_uri)
        if is_ref(src):
            src, _ = self.resolve(src)
        shown = storage.redact(str(bundle_uri))
        kind = self._io(storage.kind, src)
        if kind != "folder":
            raise BundleError(f"{shown}: " + ("a file; point to the bundle's folder (<storage>/<run>/model)"
                                             if kind else "nothing there; point to a bundle folder "
                                                          "(<storage>/<run>/model, from rnnjobs train)"))
        stage.mkdir(parents=True)
        for f in (META, WEIGHTS):
            uri = storage.join(src, f)
            if self._io(storage.kind, uri) == "file":
                (stage / f).write_bytes(self._io(storage.read_bytes, uri))
        try:
            return load_bundle(stage).meta
        except BundleError as e:
            raise BundleError(str(e).replace(str(stage), shown)) from None

    def _claim(self, name: str, source: str) -> int:
        """Take the next free version number: CLAIM created if absent, from max taken + 1 upward."""
        n = max(self.scan(name).taken, default=0) + 1
        for _ in range(1000):
            uri = self._at(name, n, CLAIM)
            body = json.dumps({"claimed": now(), "source": source, "token": uuid.uuid4().hex}).encode()
            if self._io(storage.create_if_absent, uri, body):
                return n
            n += 1  # another register took n between the listing and now
        raise UserError(f"{name}: no free version number after 1000 tries in {storage.redact(self.uri)}")

    def promote(self, name: str, version: int, alias: str = DEFAULT_ALIAS, *, expect: int | None | _Any = ANY,
                reason: str | None = None, figures: dict | None = None) -> tuple[dict, bool]:
        """Point ``name@alias`` at ``version``; return ``(the alias's latest move, moved)``.

        ``expect``: the version the caller saw the alias at (None: not set); if it has moved since,
        nothing is written and ``PromoteConflict`` says where it points now. A promote that loses
        the race for the next seq to a concurrent one also raises ``PromoteConflict``. Pointing
        the alias where it already points writes nothing (``moved`` is False). ``reason`` and
        ``figures`` (the numbers that justified the move) are recorded with it."""
        check_name(name)
        check_name(alias, "alias")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UserError(f"version {version!r}: expected a version number (1, 2, 3, ...)")
        figures = _plain_object(figures, "figures")
        listing = self.require(name)
        self.version(name, version, listing)  # exists and is complete
        seqs = listing.aliases.get(alias, [])
        current = self.alias_target(name, alias, listing)
        previous = current.get("version") if current else None
        if expect is not ANY and expect != previous:
            raise PromoteConflict(
                f"{name}@{alias} is {_where(previous)}, not {_where(expect)} as expected: "
                f"{_moved_by(current)}; nothing was changed. Compare against what it points at now "
                f"(`rnnjobs models show {name}@{alias}`) and promote again with "
                f"--expect {previous if previous is not None else 'none'} if it should still move")
        if previous == version:
            return current, False
        seq = (seqs[-1] if seqs else 0) + 1
        move = {"name": name, "alias": alias, "seq": seq, "version": version, "previous": previous,
                "when": now(), "reason": reason, "figures": figures}
        uri = self._move_uri(name, alias, seq)
        body = json.dumps(move, indent=1).encode()
        if not self._io(storage.create_if_absent, uri, body):
            try:
                winner = self._json(uri)
            except UserError:
                winner = {}
            raise PromoteConflict(
                f"{name}@{alias} was moved by another promote at the same moment (to "
                f"{_where(winner.get('version'))}); nothing was changed. Look at "
                f"`rnnjobs models show {name}@{alias}` and promote again if it should still move")
        return move, True


def _plain_object(value: dict | None, what: str) -> dict:
    """``value`` (None: {}) as a JSON object of plain values, or a ``UserError`` naming ``what``."""
    if value is not None and not isinstance(value, dict):
        raise UserError(f"{what}: {type(value).__name__}, expected a JSON object (a dict)")
    try:
        return json.loads(json.dumps(value or {}, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise UserError(f"{what}: not plain JSON ({e}); give numbers, strings, lists and objects") from None


def _where(v) -> str:
    return "unset" if v is None else f"version {v}"


def _moved_by(move: dict | None) -> str:
    if not move:
        return "it was never set"
    why = f" ({move['reason']})" if move.get("reason") else ""
    return f"it was moved at {move.get('when')}{why}"


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def key_metrics(info: dict) -> str:
    """The one or two numbers that rank a version, from its version.json metrics ('-' if none)."""
    m = info.get("metrics") or {}
    parts = []
    if isinstance(m.get("rmae"), (int, float)):
        parts.append(f"rMAE {m['rmae']:.3f}")
    mase = (m.get("model") or {}).get("mase") if isinstance(m.get("model"), dict) else None
    if isinstance(mase, (int, float)):
        parts.append(f"MASE {mase:.3f}")
    val = m.get("val") if isinstance(m.get("val"), dict) else {}
    if isinstance(val.get("bits_per_char"), (int, float)):
        parts.append(f"val {val['bits_per_char']:.3f} bits/char")
    return ", ".join(parts) or "-"
