"""``rnnjobs models register|list|show|promote``: the model registry (rnnlib.registry) from the
command line. Parse, call, print; the registry's logic lives in rnnlib."""

from __future__ import annotations

import dataclasses
import json

from jobs import tracking
from rnnlib import storage
from rnnlib.errors import UserError
from rnnlib.registry import ANY, DEFAULT_ALIAS, Registry, key_metrics, parse_ref, registry_uri
from rnnlib.tables import table


def open_registry(args) -> Registry:
    return Registry(registry_uri(args.registry, "--registry"), args.endpoint_url)


def _json_file(path: str, flag: str, endpoint_url: str | None) -> dict:
    try:
        value = json.loads(storage.read_bytes(path, endpoint_url).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{flag} {path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag} {path}: expected a JSON object, e.g. {{\"data_sha256\": \"...\"}}")
    return value


def _figures(args) -> dict | None:
    figures = _json_file(args.figures_json, "--figures-json", args.endpoint_url) if args.figures_json else {}
    for item in args.figure or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--figure {item!r}: expected KEY=VALUE, e.g. --figure rmae=0.93")
        try:
            figures[key] = json.loads(value)  # numbers stay numbers
        except json.JSONDecodeError:
            figures[key] = value
    return figures or None


def register(args) -> int:
    reg = open_registry(args)
    data = _json_file(args.data_json, "--data-json", args.endpoint_url) if args.data_json else None
    info = reg.register(args.name, args.bundle, data=data)
    print(f"registered {info['name']} version {info['version']} ({info['task']}, weights "
          f"{info['weights_sha256'][:12]}, {key_metrics(info)}) from {info['source']}\n"
          f"  reference: models://{info['name']}/{info['version']}\n"
          f"  promote:   rnnjobs models promote {info['name']} {info['version']} --alias {DEFAULT_ALIAS}")
    return 0


def list_models(args) -> int:
    reg = open_registry(args)
    if args.name:
        return _list_versions(reg, args.name)
    rows = []
    for name in reg.names():
        listing = reg.scan(name)
        if not listing.taken:
            continue
        aliases = reg.aliases(name, listing)
        rows.append([name, len(listing.complete), max(listing.complete, default="-"),
                     len(listing.incomplete) or "", ", ".join(f"{a}={m['version']}" for a, m in aliases.items())
                     or "-"])
    if not rows:
        print(f"no models in {storage.redact(reg.uri)} (register one: rnnjobs models register NAME BUNDLE)")
        return 0
    print(table(rows, ["name", "versions", "latest", "incomplete", "aliases"]))
    return 0


def _list_versions(reg: Registry, name: str) -> int:
    listing = reg.require(name)
    pointing: dict[int, list[str]] = {}
    for alias, move in reg.aliases(name, listing).items():
        pointing.setdefault(move["version"], []).append(alias)
    rows = []
    for v in reg.versions(name, listing):
        if v.get("incomplete"):
            rows.append([v["version"], v.get("claimed") or "-", "-", "-", "incomplete (no version.json): skipped",
                         ", ".join(pointing.get(v["version"], [])) or "-"])
        else:
            rows.append([v["version"], v["created"], v["weights_sha256"][:12], v["task"], key_metrics(v),
                         ", ".join(pointing.get(v["version"], [])) or "-"])
    print(f"{name} in {storage.redact(reg.uri)}:\n" + table(rows, ["version", "created", "weights", "task",
                                                                    "metrics", "aliases"]))
    return 0


def show(args) -> int:
    reg = open_registry(args)
    ref = args.ref.removeprefix("models://")
    if "@" not in ref and "/" not in ref:  # a name alone: its aliases and their histories
        listing = reg.require(ref)
        print(f"{ref}: versions {', '.join(map(str, sorted(listing.complete))) or 'none complete'}"
              f" (rnnjobs models list {ref})")
        for alias in sorted(listing.aliases):
            print(f"\n{ref}@{alias}:\n" + _history(reg.alias_history(ref, alias, listing)))
        if not listing.aliases:
            print(f"no aliases yet (rnnjobs models promote {ref} VERSION)")
        return 0
    r = parse_ref(ref, scheme=False)
    uri, info = reg.resolve(r)
    info.pop("ref", None)
    print(f"{r} -> {storage.redact(uri)}")
    print(json.dumps(info, indent=2, ensure_ascii=False))
    if r.alias:
        print(f"\n{r.name}@{r.alias}:\n" + _history(reg.alias_history(r.name, r.alias)))
    return 0


def _history(moves: list[dict]) -> str:
    rows = [[m.get("seq"), m.get("when"), m.get("version"), "-" if m.get("previous") is None else m["previous"],
             m.get("reason") or "-", json.dumps(m.get("figures") or {}, ensure_ascii=False)[:80]] for m in moves]
    return table(rows, ["seq", "when", "version", "previous", "reason", "figures"])


def promote(args) -> int:
    reg = open_registry(args)
    tracker = tracking.connect_flags(args)  # before anything moves
    expect = getattr(args, "expect", ANY)  # the flag absent: move the alias wherever it points now
    move, moved = reg.promote(args.name, args.version, args.alias, expect=expect, reason=args.reason,
                              figures=_figures(args))
    if not moved:
        print(f"{args.name}@{args.alias} already points at version {args.version} (since {move.get('when')}); "
              "nothing to do")
        return 0
    if tracker is not None:
        tracking.log_promotion(tracker, move, reg.version(args.name, args.version))
    was = "was not set" if move["previous"] is None else f"was version {move['previous']}"
    print(f"{args.name}@{args.alias} -> version {move['version']} ({was}; move {move['seq']})\n"
          f"  models://{args.name}@{args.alias} now resolves to "
          f"{storage.redact(reg.bundle_uri(args.name, args.version))}")
    return 0


def gate(args) -> int:
    from rnnlib.config import GateConfig
    from rnnlib.gate import gate

    settings = GateConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GateConfig)})
    reg = open_registry(args)
    tracker = tracking.connect_flags(args)  # before the backtests
    res = gate(reg, args.name, args.version, args.histories, settings, alias=args.alias, promote=args.promote,
               endpoint_url=args.endpoint_url)
    print(gate_report(args.name, args.alias, res))
    tracking.log_gate(tracker, args.name, args.alias, args.histories, res)
    return 0 if res.decision.promote else 1


def _against(record: dict) -> str:
    """Whom a gate record compared with: the alias's version then, or persistence alone."""
    if record["champion"] is None:
        return f"persistence ({record['alias']} was not set)"
    return f"{record['alias']} (then version {record['champion']})"


def gate_report(name: str, alias: str, res) -> str:
    """What a gate decided, with every side's figures: printed by ``models gate`` and by train's release step."""
    d = res.decision
    against = (f"{name}@{alias} (version {res.champion})" if res.champion is not None
               else f"persistence ({name}@{alias} is not set)")
    lines = [f"gate: {name} version {res.candidate} against {against}, last {d.settings['days']} days:", d.table()]
    if res.moved:
        lines.append(f"PROMOTED: {name}@{alias} -> version {res.candidate}")
    elif d.promote:
        why = "it already points there" if res.champion == res.candidate else "--dry-run"
        lines.append(f"passed; {name}@{alias} not moved ({why})")
    else:
        stays = f"version {res.champion}" if res.champion is not None else "unset"
        lines += ["REFUSED: " + "; ".join(d.reasons), f"{name}@{alias} stays {stays}"]
    lines.append(f"decision: {storage.redact(res.record)}")
    return "\n".join(lines)


def release(cfg, model_uri: str, run: str, data: dict) -> dict:
    """Train's last step with ``release.model`` set: register the exported model (once: a rerun
    finds the version holding the same weights), gate it against ``<model>@<alias>`` and
    persistence on the histories (once per version), print the decision. Returns what happened:
    model, alias, version, registered (now), gate (the ``GateResult``; None if gated before)."""
    from rnnlib.datasets import sample_stocks_dir
    from rnnlib.gate import gate

    r = cfg.release
    reg = Registry(registry_uri(r.registry, "release.registry"), cfg.endpoint_url)
    meta = json.loads(storage.read_bytes(storage.join(model_uri, "bundle.json"), cfg.endpoint_url))
    version = reg.find(r.model, meta["weights_sha256"])
    done = {"model": r.model, "alias": r.alias, "version": version, "registered": version is None, "gate": None}
    if version is None:
        done["version"] = version = reg.register(r.model, model_uri, data={**data, "run": run})["version"]
        print(f"registered {r.model} version {version} (models://{r.model}/{version})")
    else:
        print(f"already registered: {r.model} version {version} holds these weights")
    earlier = reg.notes(r.model, version, "gates")
    if earlier:
        last = earlier[-1]
        print(f"already gated: {r.model} version {version} was {'promoted' if last['promote'] else 'refused'} "
              f"against {_against(last)}; `rnnjobs models gate` gates it again")
        return done
    histories = r.histories or cfg.data.path or str(sample_stocks_dir())
    done["gate"] = res = gate(reg, r.model, version, histories, r.gate, alias=r.alias, endpoint_url=cfg.endpoint_url)
    print(gate_report(r.model, r.alias, res))
    return done


ACTIONS = {"register": register, "list": list_models, "show": show, "promote": promote, "gate": gate}
