"""Sequence matching (PS3.4 C.2.2.2.6) over the item tables of the archive's index.

The archive keeps the items of a few sequence attributes one row per item
(:data:`dimsekit_plugins.archive.index.ITEM_TABLES`: Other Patient IDs
Sequence, Procedure Code Sequence, Request Attributes Sequence).  A sequence
key of a C-FIND identifier becomes, by :func:`plan`, a :class:`SequencePlan`:

=====================================  ===========================  ====================================
the key in the request                 matching                     returned
=====================================  ===========================  ====================================
zero-length, or one empty item         universal                    every stored item, all kept
                                                                    attributes ("the entire Sequence")
one item whose keys are all universal  universal                    every stored item, the item's keys
(zero-length or ``*``)                                              only
one item with keys that match          an entity matches when at    the *matching* items, the item's
                                       least one stored item        keys only
                                       matches every item key       (zero-length when not stored)
more than one item                     refused: A900 (the standard allows a single item)
=====================================  ===========================  ====================================

Each item key is matched with the rules of :func:`~dimsekit_plugins.qr.matching.condition_for`
(single value, wild card, range, list of UIDs), by the key's VR, in SQL::

    EXISTS (SELECT 1 FROM study_procedure_code sq
             WHERE sq.study_instance_uid = st.study_instance_uid AND (sq.code_value = ?) ...)

and the items come back from the same SELECT as one JSON text per entity
(``json_group_array`` of ``json_array(item number, attributes...)``), decoded
by :meth:`SequencePlan.sequence` into a pydicom Sequence.  An item key the
index does not keep (a nested sequence, an attribute not listed) is not
matched on and comes back zero-length in every item; the match is then
reported FF01, as for any unsupported optional key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

from dimsekit.datasets import is_several, values_of
from dimsekit_plugins.archive.index import ITEM_TABLES, ItemTable
from dimsekit_plugins.qr.matching import Condition, MatchingError, condition_for

__all__ = ["OWNERS", "ITEM_TABLE_BY_KEYWORD", "ItemKey", "SequencePlan", "plan"]

#: The SQL expression of an item table's owner, by the level of the table (the Q/R FROM clauses' aliases).
OWNERS = {"patient": "p.pk", "study": "st.study_instance_uid", "series": "se.series_instance_uid"}

#: sequence keyword -> where its items are kept
ITEM_TABLE_BY_KEYWORD: dict[str, ItemTable] = {spec.sequence: spec for spec in ITEM_TABLES}

#: the alias of the item table in the generated SQL
_ALIAS = "sq"


@dataclass(frozen=True, slots=True)
class ItemKey:
    """One attribute of the returned items: its tag, keyword, VR and the column keeping it (None: not kept)."""

    tag: int
    keyword: str
    vr: str
    column: str | None


@dataclass(slots=True)
class SequencePlan:
    """How one sequence key is matched and returned (see the module docstring).

    :param condition: the entity-level condition (empty: universal).
    :param select: a SQL expression giving the returned items as JSON text.
    :param params: the parameters of ``select``.
    :param returned: the attributes of each returned item, in order.
    :param unsupported: item keys not matched on (returned zero-length).
    """

    spec: ItemTable
    condition: Condition
    select: str
    params: tuple[Any, ...]
    returned: list[ItemKey]
    unsupported: list[str] = field(default_factory=list)

    def sequence(self, raw: str | None) -> Sequence:
        """The response's Sequence of Items from the JSON text the SELECT gave."""
        items = sorted(json.loads(raw), key=lambda row: row[0]) if raw else []
        out = Sequence()
        for row in items:
            values = row[1:]
            item = Dataset()
            n = 0
            for key in self.returned:
                if key.column is None:
                    value = Sequence() if key.vr == "SQ" else None
                else:
                    value = values[n]
                    n += 1
                    if value == "":
                        value = None
                    elif value is not None and "\\" in value and key.vr not in ("LT", "ST", "UT"):
                        value = value.split("\\")
                item.add(DataElement(key.tag, key.vr, value))
            out.append(item)
        return out

    def texts(self, sequence: Sequence) -> list[str]:
        """The text values of a returned sequence (to choose the response's character set)."""
        found: list[str] = []
        for item in sequence:
            for element in item:
                value = element.value
                if isinstance(value, str | PersonName) or is_several(value):
                    found.extend(str(v) for v in values_of(value))
        return found


def _vr(element: DataElement) -> str:
    vr = str(element.VR or "UN")
    if vr == "UN":
        try:
            vr = dictionary_VR(element.tag)
        except KeyError:
            return "UN"
    return vr.split(" or ")[0]


def _value(element: DataElement) -> Any:
    value = element.value
    if value is None or isinstance(value, Sequence):
        return value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if is_several(value):
        return [str(v) for v in value]
    return str(value)


def plan(keyword: str, value: Any, spec: ItemTable, owner: str) -> SequencePlan:
    """The :class:`SequencePlan` of a sequence key.

    :param keyword: the sequence's keyword (for messages).
    :param value: the key's value (a pydicom Sequence; anything else is taken as zero-length).
    :param spec: where the index keeps its items.
    :param owner: SQL expression of the owning entity's key (see :data:`OWNERS`).
    :raises MatchingError: more than one item, or an item key whose value cannot be matched.
    """
    columns = dict(spec.attributes)
    items = value if isinstance(value, Sequence) else Sequence()
    if len(items) > 1:
        raise MatchingError(f"a sequence key holds one item (PS3.4 C.2.2.2.6), not {len(items)}")
    returned: list[ItemKey] = []
    unsupported: list[str] = []
    conditions: list[Condition] = []
    item = items[0] if len(items) else None
    if item is None or len(item) == 0:
        # universal: the entire sequence, every attribute kept
        for item_keyword, column in spec.attributes:
            tag = int(Tag(item_keyword))
            returned.append(ItemKey(tag, item_keyword, dictionary_VR(tag), column))
    else:
        for tag in sorted(item.keys()):
            tag = int(tag)
            if Tag(tag).element == 0:
                continue
            try:
                element = item[tag]
            except Exception:  # a value pydicom cannot convert: not matched, returned empty
                element = DataElement(tag, "UN", None)
            item_keyword = element.keyword or keyword_for_tag(tag) or ""
            if item_keyword == "SpecificCharacterSet":
                continue
            vr = _vr(element)
            column = columns.get(item_keyword)
            returned.append(ItemKey(tag, item_keyword, vr, column))
            if column is None:
                unsupported.append(f"{keyword}>{item_keyword or Tag(tag)}")
                continue
            try:
                condition = condition_for(f"{_ALIAS}.{column}", vr, _value(element))
            except MatchingError as exc:
                raise MatchingError(f"item key {item_keyword}: {exc}") from None
            if condition.sql:
                conditions.append(condition)
    where_sql = "".join(f" AND ({c.sql})" for c in conditions)
    params = tuple(p for c in conditions for p in c.params)
    correlation = f"{_ALIAS}.{spec.owner} = {owner}"
    kept = [key.column for key in returned if key.column is not None]
    fields = ", ".join([f"{_ALIAS}.item", *(f"{_ALIAS}.{column}" for column in kept)])
    select = (
        f"(SELECT json_group_array(json_array({fields})) FROM {spec.table} {_ALIAS}"
        f" WHERE {correlation}{where_sql})"
    )
    condition = (
        Condition(f"EXISTS (SELECT 1 FROM {spec.table} {_ALIAS} WHERE {correlation}{where_sql})", params)
        if conditions else Condition("")
    )
    return SequencePlan(spec, condition, select, params, returned, unsupported)
