"""`parasearch`: a sampler drives executions on a profile's slots, asynchronously, resumably.

    parasearch [--algo A] [--n N] [--name NAME] ... PROFILE SCRIPT [-- SCRIPT ARGS...]
    parasearch status|best|report|export NAME

A thin layer: the search is parasearch.search on liborchestra's driver loop; the views are
runaway's renderer and interrupts (Ctrl-C drains, twice cancels).
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import sys
import time
import uuid as uuidlib
from pathlib import Path

import anyio

from liborchestra import heap
from liborchestra._fields import Bad, parse_duration
from liborchestra.driver import Driver, Policy
from liborchestra.errors import OrchestraError
from liborchestra.federation import load_profiles, open_engine, profile_ref
from liborchestra.journal import Journal, default_name
from liborchestra.profile import LEAVE
from parasearch import trials as record
from parasearch.arguments import Template, search_space
from parasearch.samplers import SAMPLERS, create_sampler
from parasearch.samplers.base import SamplerError
from parasearch.search import SearchSettings, SearchSource
from parasearch.space import Fidelity, Space, SpaceError
from parasearch.store import Store, StoreError, shown, store_url
from parasearch.view import SearchView
from runaway.argv import add_version, split_script_args
from runaway.interrupts import Interrupts
from runaway.render import Renderer

EXIT_USAGE, EXIT_INFRASTRUCTURE = 2, 3
QUERIES = ("status", "best", "report", "export")
MULTI_FIDELITY = ("asha", "hyperband")


def search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parasearch", description="Search the parameters of SCRIPT on PROFILE's slots. "
        "Priors go in the script's arguments (--lr~'loguniform(1e-5, 1)' reaches it as "
        "--lr=VALUE) or in --space FILE.yml. The script prints `RUNAWAY_FEATURES: <objective>` "
        "or writes results.json {\"objective\": v}. Also: parasearch status|best|report|export "
        "NAME.")
    add_version(p, "parasearch")
    p.add_argument("profile", nargs="?")
    p.add_argument("script", type=Path, nargs="?")
    p.add_argument("args", nargs="*", metavar="ARG", help="after `--`: the script's arguments")
    p.add_argument("--algo", default="random", help=f"one of {', '.join(SAMPLERS)}")
    p.add_argument("--n", type=int, default=100, help="completed trials that end the search")
    p.add_argument("--name", help="search name (default: script, time and a tag)")
    p.add_argument("-o", "--output", type=Path, help="search folder (default ./search/NAME)")
    p.add_argument("--parallel", type=int, help="at most K trials at once (default: the slots)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--maximize", action="store_true")
    p.add_argument("--space", help="a YAML file of priors (name: prior)")
    p.add_argument("--max-broken", type=int, default=10,
                   help="stop after M failed trials (exit != 0 or no objective)")
    p.add_argument("--crash-limit", type=int, default=3,
                   help="re-run a trial lost to the infrastructure up to N times")
    p.add_argument("--duration", help="expected duration of each trial (e.g. 20m)")
    p.add_argument("--code", type=Path, help="folder to ship (default: the script's folder)")
    p.add_argument("--resume", action="store_true", help="continue the search NAME")
    p.add_argument("--storage", metavar="URL",
                   help="the shared search store: postgresql://USER@HOST/DB (many drivers, "
                        "many machines) or sqlite:///PATH (default: ./search/NAME/search.sqlite)")
    p.add_argument("--campaign", type=Path, metavar="DIR",
                   help="record every trial in this expegit campaign (SCRIPT is in its code/, "
                        "run at the commit of code/'s HEAD)")
    p.add_argument("--lease", type=float, default=60.0, metavar="SECONDS",
                   help="how long a trial stays reserved without this driver's heartbeat "
                        "(default 60); then another driver takes it over")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a live view")
    p.add_argument("-l", "--leave", choices=LEAVE, default="code")
    return p


def query_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="parasearch")
    sub = top.add_subparsers(dest="query", required=True)
    for name, text in (("status", "counts, best so far, failures"),
                       ("best", "the best trials"), ("report", "an HTML report with plots"),
                       ("export", "every trial")):
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("name")
        q.add_argument("-o", "--output", type=Path, help="search folder (default ./search/NAME)")
        q.add_argument("--storage", metavar="URL", help="the search store, when not this "
                       "folder's (postgresql://USER@HOST/DB or sqlite:///PATH)")
        if name == "best":
            q.add_argument("--top", type=int, default=1)
            q.add_argument("--json", action="store_true")
        elif name == "report":
            q.add_argument("--file", "-f", type=Path, dest="file",
                           help="where to write it (default ./search/NAME/report.html)")
        elif name == "export":
            q.add_argument("--format", choices=("csv", "json"), default="csv")
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    renderer = Renderer(prog="parasearch")
    try:
        if argv[:1] and argv[0] in QUERIES:
            return _query(query_parser().parse_args(argv), renderer)
        argv, tail = split_script_args(argv)
        args = search_parser().parse_args(argv)
        args.args = [*args.args, *tail]
        journal, store = _resumed(args) if args.resume else create_search(args)
        interrupts = Interrupts(renderer)
        heap.settle()
        return anyio.run(interrupts.run, _search, journal, store, args, renderer,
                         backend="asyncio")
    except StoreError as error:
        renderer.error(str(error))
        return EXIT_INFRASTRUCTURE
    except (OrchestraError, SpaceError, SamplerError) as error:
        renderer.error(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())


# -- a search --------------------------------------------------------------------------------------

SHARED = ("template", "priors", "algo", "n", "seed", "maximize", "max_broken")  # in the store


def settings_of(meta: dict, shared: dict, folder: Path) -> SearchSettings:
    """A driver's search settings from its journal's meta and the store's (resume, and the
    web page driving a search it launched)."""
    template = Template(tuple((text, name) for text, name in shared["template"]))
    return SearchSettings(
        script=Path(meta["script"]), output=folder, template=template,
        space=Space.parse(shared["priors"]), algo=shared["algo"], n=int(shared["n"]),
        seed=int(shared["seed"]), maximize=bool(shared["maximize"]),
        parallel=meta.get("parallel"), max_broken=int(shared["max_broken"]),
        code=Path(meta["code"]) if meta.get("code") else None,
        duration=parse_duration(meta["duration"]) if meta.get("duration") else None,
        lease=float(meta["lease"]))


def create_search(args: argparse.Namespace) -> tuple[Journal, Store]:
    """Check everything first (one clear error, nothing written), then create this driver's
    journal, and the search in the store unless another driver created it (then join it)."""
    if args.profile is None or args.script is None:
        raise OrchestraError("parasearch needs PROFILE SCRIPT (or --resume --name NAME)")
    recorded: dict = {}
    if args.campaign is not None:  # checked first; the code is exported at its commit
        from parasearch.campaign import prepare

        recorded = prepare(args.campaign, str(args.script))
        args.script = Path(recorded["tree"]) / recorded["campaign_script"]
    if not args.script.is_file():
        raise OrchestraError(f"{args.script}: no such script")
    if args.algo not in SAMPLERS:
        raise OrchestraError(f"--algo {args.algo}: unknown; known: {', '.join(SAMPLERS)}")
    for flag, value, low in (("--n", args.n, 1), ("--max-broken", args.max_broken, 1),
                             ("--crash-limit", args.crash_limit, 0),
                             ("--parallel", args.parallel, 1), ("--lease", args.lease, 3)):
        if value is not None and value < low:
            raise OrchestraError(f"{flag} must be {low} or more, not {value}")
    if args.duration:
        try:
            parse_duration(args.duration)
        except Bad as error:
            raise OrchestraError(f"--duration: {error}") from None
    try:
        template, space, priors = search_space(args.args, args.space)
    except SpaceError:
        raise
    except ValueError as error:  # a --space file that is not a mapping or list of priors
        raise OrchestraError(f"--space: {error}") from None
    fidelity = [d.name for d in space if isinstance(d, Fidelity)]
    if fidelity and args.algo not in MULTI_FIDELITY:
        raise OrchestraError(f"dimension {fidelity[0]!r}: fidelity dimensions need a "
                             f"multi-fidelity algorithm ({', '.join(MULTI_FIDELITY)}), and "
                             f"--algo {args.algo} ignores fidelity")
    create_sampler(args.algo, space, seed=args.seed, maximize=args.maximize)  # e.g. cmaes on
    # a categorical space: refused now, before anything is written
    profiles = load_profiles(args.profile)
    name = args.name or default_name(args.script.stem)
    folder = record.search_folder(name, args.output)
    if (folder / record.JOURNAL).exists():
        raise OrchestraError(f"{folder}: a driver of search {name!r} ran here; use --resume "
                             "--name to continue it, or another --name or -o")
    shared = {"name": name, "template": [list(p) for p in template.parts], "priors": priors,
              "algo": args.algo, "n": args.n, "seed": args.seed, "maximize": args.maximize,
              "max_broken": args.max_broken, "created": time.time()}
    url = store_url(args.storage, folder)
    store = Store(url, name)
    if store.exists() or not store.create(shared):  # another driver's: join if the same
        theirs = store.meta()
        differ = [k for k in SHARED if theirs.get(k) != shared[k]]
        if differ:
            store.close()
            raise OrchestraError(f"search {name!r} exists in {shown(url)} with other "
                                 f"{', '.join(differ)}: give the same, or another --name")
    meta = {"name": name, "kind": "search-driver", "storage": url,
            "driver_id": f"{socket.gethostname()}-{uuidlib.uuid4().hex[:8]}",
            "profile_name": ",".join(p.name for p in profiles),
            "profile": profile_ref(args.profile),
            "script": str(args.script.resolve()),
            "code": str(args.code.resolve()) if args.code else None,
            "parallel": args.parallel, "duration": args.duration, "leave": args.leave,
            "lease": args.lease, "created": time.time(), **recorded,
            **Policy(crash_limit=args.crash_limit).to_meta()}
    return Journal.create(folder / record.JOURNAL, meta), store


def _resumed(args: argparse.Namespace) -> tuple[Journal, Store]:
    if not args.name:
        raise OrchestraError("--resume needs --name NAME (the search to continue)")
    journal = record.local_journal(args.name, args.output)
    if journal is None:
        raise OrchestraError(f"no search named {args.name!r} ran here (no "
                             f"{record.search_folder(args.name, args.output) / record.JOURNAL})")
    meta = journal.meta()
    store = Store(meta["storage"], args.name)
    shared = store.meta()
    if args.script and str(args.script.resolve()) != meta["script"]:
        raise OrchestraError(f"--resume: the script differs from the search's record "
                             f"({args.script.resolve()} given, {meta['script']} recorded)")
    if args.args:
        template, space, priors = search_space(args.args, args.space)
        given = [list(p) for p in template.parts]
        if given != shared["template"] or priors != shared["priors"]:
            raise OrchestraError(f"--resume: the script arguments differ from the search's "
                                 f"record ({shlex.join(args.args)} given)")
    return journal, store


async def _search(journal: Journal, store: Store, args: argparse.Namespace,
                  renderer: Renderer, interrupts: Interrupts) -> int:
    meta = journal.meta()
    settings = settings_of(meta, store.meta(), journal.path.parent)
    with journal.lease():
        async with open_engine(str(meta["profile"]), leave=str(meta["leave"])) as engine:
            if meta.get("campaign"):
                from parasearch.campaign import CampaignSearch

                source: SearchSource = CampaignSearch(
                    engine, settings, store, str(meta["driver_id"]), meta=meta,
                    profile=str(meta["profile"]))
            else:
                source = SearchSource(engine, settings, store, str(meta["driver_id"]))
            view = SearchView(journal, engine, source, settings, args.json, renderer.console)
            engine.listeners.append(view.event)
            driver = Driver(engine, journal, source, Policy.from_meta(meta))
            interrupts.on_first = lambda: (driver.drain(), renderer.note(
                "draining: no new trials; running ones finish and are recorded "
                "(Ctrl-C again: cancel now)"))
            with view:
                await view.run_beside(driver.run())
        view.summary()
    store.close()
    if source.failure:
        renderer.error(source.failure)
        return 1
    return 0 if source.completed() >= settings.n or source.exhausted else 1


# -- queries -------------------------------------------------------------------------------------

def _query(args: argparse.Namespace, renderer: Renderer) -> int:
    store = record.open_search(args.name, args.output, args.storage)
    meta = store.meta()
    rows = record.trials(store)
    store.close()
    maximize = bool(meta.get("maximize"))
    best = record.ranked(rows, maximize)
    folder = record.search_folder(args.name, args.output)
    if args.query == "status":
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.state] = counts.get(r.state, 0) + 1
        done = counts.get("completed", 0)
        drivers = sorted({r.driver for r in rows if r.state == "reserved"})
        local = record.local_journal(args.name, args.output)
        here = "running" if local is not None and local.driver_alive() else "stopped"
        print(f"{meta['name']}: {meta['algo']}, {done} of {meta['n']} completed "
              f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); driver here "
              f"{here}; trials reserved by {len(drivers)} driver(s)")
        if best:
            print(f"  best {best[0].value!r} at {_shown(best[0].params)} (trial {best[0].seq})")
        for r in [r for r in rows if r.state == "failed"][-5:]:
            print(f"  failed trial {r.seq} [{_shown(r.params)}]: {r.message}"
                  + _stderr_tail(folder / r.uuid))
        return 0
    if args.query == "best":
        top = best[:max(1, args.top)]
        if args.json:
            items = [{"objective": r.value, "params": r.params, "metrics": r.metrics,
                      "trial": r.seq, "uuid": r.uuid} for r in top]
            print(json.dumps(items[0] if args.top == 1 and items else items))
        elif not top:
            renderer.note("no completed trial yet")
        for r in top if not args.json else []:
            print(f"{r.value!r}\t{_shown(r.params)}\ttrial {r.seq}")
        return 0 if top else 1
    if args.query == "export":
        if args.format == "json":
            print(json.dumps(record.as_records(rows), indent=1))
        else:
            sys.stdout.write(record.to_csv(rows))
        return 0
    from parasearch.report import report_html

    target = args.file or folder / "report.html"
    fidelity = next((d.name for d in Space.parse(meta["priors"]) if isinstance(d, Fidelity)),
                    None)
    target.write_text(report_html(meta["name"], rows, maximize, fidelity=fidelity))
    renderer.note(f"report written to {target}")
    return 0


def _shown(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()))


def _stderr_tail(folder: Path) -> str:
    path = folder / "stderr"
    if not path.is_file():
        return ""
    lines = path.read_text(errors="replace").strip().splitlines()[-2:]
    return (": " + " | ".join(lines)) if lines else ""
