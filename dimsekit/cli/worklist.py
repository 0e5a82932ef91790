"""Manage the Modality Worklist items a dimsekit node serves (its worklist plugin).

    dimsekit worklist add ITEM.json [ITEM.dcm ...] [--config node.toml] [--data-dir DIR]
    dimsekit worklist list [--json]
    dimsekit worklist remove ID [ID ...]

The items live in the node's database, found from the same --config and
--data-dir as ``twistd dimsekit`` (the archive's index.sqlite under the data
directory, or ``[plugins.worklist] database``); a running node sees a change
on its next query.  Items of a ``[plugins.worklist] folder`` (*.wl files) are
not managed here: edit the folder.

add: each FILE is a worklist item as DICOM JSON (an object, or an array of
one) or a DICOM file.  It must have what PS3.4 Table K.6-1 makes a Type 1
return key (Patient's Name, Patient ID, Requested Procedure ID, Study
Instance UID, a Requested Procedure Description or Code Sequence, and a
Scheduled Procedure Step Sequence with Modality, Scheduled Station AE
Title, Start Date, Start Time, Scheduled Procedure Step ID and a
description or protocol code): an item without is refused with a message
naming the attribute, and then nothing is added.  An item with several
Scheduled Procedure Steps becomes one worklist item (one ID) per step.
Prints the IDs given.

list: the items as a table (ID, patient, accession, modality, station, date
and time, step), or --json: a JSON array of {"id": ..., "added": ...,
"item": DICOM JSON}.

remove: the items with these IDs (exit 1 if one was not there).

Exit status 0 on success, 1 when an item is refused or an ID is unknown, 2 on
bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from twisted.internet import defer

from dimsekit.cli._keys import BadKey, load_dataset, render_table
from dimsekit.config import ConfigError, load
from dimsekit.datasets import json_dict

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-c", "--config", help="the node's TOML configuration file")
        sub.add_argument("-d", "--data-dir", help="the node's data directory (overrides the configuration)")

    add = actions.add_parser("add", help="add worklist items (DICOM JSON or DICOM files)", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("files", nargs="+", metavar="FILE", help="a worklist item: DICOM JSON or a DICOM file")
    common(add)
    listing = actions.add_parser("list", help="list the worklist items", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    listing.add_argument("--json", action="store_true", help="a JSON array of {id, added, item (DICOM JSON)}")
    common(listing)
    remove = actions.add_parser("remove", help="remove worklist items by ID", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    remove.add_argument("ids", nargs="+", type=int, metavar="ID", help="an item's ID (see list)")
    common(remove)


def run(reactor: Any, args: argparse.Namespace) -> defer.Deferred:
    return defer.Deferred.fromCoroutine(_run(reactor, args, sys.stdout, sys.stderr))


def worklist_plugin() -> Any:
    """The worklist plugin, found like the node finds it (the ``dimsekit`` entry
    points, minus DIMSEKIT_DISABLE_PLUGINS): the core never imports a built-in plugin.

    :raises ConfigError: it is not installed, or disabled.
    """
    from dimsekit.plugin import make_plugin_manager

    plugin = make_plugin_manager().get_plugin("worklist")
    if plugin is None or not hasattr(plugin, "WorklistStore"):
        raise ConfigError("the worklist plugin is not installed, or is disabled (DIMSEKIT_DISABLE_PLUGINS)")
    return plugin


def open_store(reactor: Any, args: argparse.Namespace, plugin: Any) -> Any:
    """The worklist store of the node configured by --config / --data-dir (raises ConfigError)."""
    config = load(args.config).override(data_dir=args.data_dir)
    settings = plugin.WorklistSettings.from_config(config)
    return plugin.WorklistStore(settings.database, None, reactor, create=args.action == "add")


async def _run(reactor: Any, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    try:
        plugin = worklist_plugin()
        store = open_store(reactor, args, plugin)
    except ConfigError as exc:
        print(f"dimsekit worklist: {exc}", file=err)
        return 2
    try:
        if args.action == "add":
            return await _add(plugin, store, args, out, err)
        if args.action == "list":
            return await _list(store, args, out)
        return await _remove(store, args, out, err)
    finally:
        await store.close()


async def _add(plugin: Any, store: Any, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    datasets = []
    refused = 0
    for name in args.files:
        try:
            dataset = load_dataset(name)
            plugin.check_item(dataset)
        except BadKey as exc:
            print(f"dimsekit worklist: {exc}", file=err)
            refused += 1
            continue
        except plugin.WorklistItemError as exc:
            print(f"dimsekit worklist: {name}: refused: {exc}", file=err)
            refused += 1
            continue
        datasets.append((name, dataset))
    if refused:
        print(f"dimsekit worklist: nothing added ({refused} of {len(args.files)} file(s) refused)", file=err)
        return 1
    ids = await store.add([dataset for _, dataset in datasets])
    position = 0
    for name, dataset in datasets:
        steps = len(dataset.ScheduledProcedureStepSequence)
        mine = ids[position:position + steps]
        position += steps
        print(f"added {', '.join(str(i) for i in mine)}: {name} ({dataset.PatientName}, {dataset.PatientID})",
              file=out)
    return 0


def _row(item_id: int, dataset: Any, added: str) -> dict[str, str]:
    step = dataset.ScheduledProcedureStepSequence[0] if dataset.get("ScheduledProcedureStepSequence") else None

    def get(source: Any, keyword: str) -> str:
        if source is None:
            return ""
        value = source.get(keyword)
        return "" if value is None else str(value)

    return {
        "ID": str(item_id),
        "PatientName": get(dataset, "PatientName"),
        "PatientID": get(dataset, "PatientID"),
        "AccessionNumber": get(dataset, "AccessionNumber"),
        "Modality": get(step, "Modality"),
        "Station": get(step, "ScheduledStationAETitle"),
        "Date": get(step, "ScheduledProcedureStepStartDate"),
        "Time": get(step, "ScheduledProcedureStepStartTime"),
        "Step": get(step, "ScheduledProcedureStepID"),
        "Description": get(step, "ScheduledProcedureStepDescription"),
        "Added": added,
    }


async def _list(store: Any, args: argparse.Namespace, out: IO[str]) -> int:
    items = await store.items()
    if args.json:
        records = [{"id": i, "added": added, "item": json_dict(dataset)} for i, dataset, added in items]
        out.write(json.dumps(records, ensure_ascii=False, indent=1) + "\n")
        return 0
    if not items:
        print("no worklist items", file=out)
        return 0
    out.write(render_table([_row(*item) for item in items]))
    return 0


async def _remove(store: Any, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    removed = await store.remove(args.ids)
    missing = [i for i in args.ids if i not in removed]
    if removed:
        print(f"removed {', '.join(str(i) for i in removed)}", file=out)
    if missing:
        print(f"dimsekit worklist: no item with ID {', '.join(str(i) for i in missing)}", file=err)
        return 1
    return 0
