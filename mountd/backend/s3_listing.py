"""A ListObjectsV2 answer read straight from its XML.

botocore turns a listing page of 1,000 keys into dicts through its generic, model-driven parser
(and, before that, parsed the body once more to look for an <Error>): with the request itself,
about a third of the daemon's CPU while `find` listed a tree of 3,000 directories. A listing
page has a fixed, flat shape; ElementTree (C) reads it in a fraction of that. Anything that is not
a well-formed ListBucketResult is `None`, and the caller asks through the SDK, which decides
errors; nothing here ever raises for the caller.
"""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ListedObject:
    key: str  # the whole key, decoded
    size: int
    etag: str | None
    last_modified: str  # ISO 8601, as the server sent it


@dataclass(frozen=True, slots=True)
class ListedPage:
    objects: list[ListedObject]
    prefixes: list[str]  # the whole common prefixes, decoded
    next_token: str | None  # where the next page starts; None on the last


def _name(tag: str) -> str:
    return tag.rpartition("}")[2]  # without the S3 namespace, which some servers leave out


def _url_decoded(key: str) -> str:
    """`unquote_plus(key)`, without its cost for the usual key (a third of a page's parsing went to
    it): servers encode a key's slashes as `%2F` and little else, and a `%2F` in the encoded key is
    always an escape (a `%` of the key itself comes as `%25`)."""
    key = key.replace("+", " ")
    if "%" in key:
        key = key.replace("%2F", "/")
        if "%" in key:
            key = urllib.parse.unquote(key)
    return key


def parse_listing(body: bytes) -> ListedPage | None:
    """The page a ListObjectsV2 answer holds (asked with encoding-type=url), or None."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    if _name(root.tag) != "ListBucketResult":
        return None
    contents: list[dict[str, str]] = []
    prefixes: list[str] = []
    fields: dict[str, str] = {}
    for child in root:
        name = _name(child.tag)
        if name == "Contents":
            contents.append({_name(c.tag): c.text or "" for c in child})
        elif name == "CommonPrefixes":
            prefixes.extend(c.text or "" for c in child if _name(c.tag) == "Prefix")
        else:
            fields[name] = child.text or ""
    # keys with characters XML 1.0 cannot hold arrive encoded (EncodingType comes after them)
    decode = _url_decoded if fields.get("EncodingType") == "url" else str
    try:
        objects = [ListedObject(key=decode(o["Key"]), size=int(o.get("Size") or 0), etag=o.get("ETag"),
                                last_modified=o["LastModified"]) for o in contents]
    except (KeyError, ValueError):
        return None
    prefixes = [decode(p) for p in prefixes]
    truncated = fields.get("IsTruncated", "false").lower() == "true"
    token = fields.get("NextContinuationToken") or None
    if truncated and token is None:
        return None  # more to come, but no way to ask for it: the SDK path decides
    return ListedPage(objects, prefixes, token if truncated else None)
