"""Edge path normalization (gatewayd/proxy/pathnorm.py): a table of spellings, each
option on its own, and properties over arbitrary request paths."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gatewayd.proxy.pathnorm import (
    EDGE_PATH_POLICY,
    EscapedSlashes,
    PathError,
    PathPolicy,
    normalize_path,
    remove_dot_segments,
    split_target,
)

OFF = PathPolicy(
    normalize=False,
    merge_slashes=False,
    escaped_slashes=EscapedSlashes.KEEP,
    strip_fragment=False,
)


def norm(path: bytes, policy: PathPolicy = EDGE_PATH_POLICY) -> tuple[bytes, bool]:
    return normalize_path(path, policy)


# --------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # already normal: returned as is (the fast path)
        (b"/", b"/"),
        (b"/admin", b"/admin"),
        (b"/admin/", b"/admin/"),
        (b"/a.b/c..d/.e/f.", b"/a.b/c..d/.e/f."),
        (b"/ADMIN", b"/ADMIN"),  # case is meaningful in paths: never folded
        # RFC 3986 6.2.2.2: encoded unreserved characters are decoded
        (b"/%61dmin", b"/admin"),
        (b"/%41%42%7e%2D%5f%2E", b"/AB~-_."),
        # 6.2.2.1: other encodings keep their octet with upper-case hex
        (b"/a%3ab%20c", b"/a%3Ab%20c"),
        (b"/%e2%82%ac", b"/%E2%82%AC"),
        (b"/%25", b"/%25"),
        (b"/%2541", b"/%2541"),  # "%25" is "%": decoding once never creates "%41"
        # 5.2.4: dot-segments
        (b"/./admin", b"/admin"),
        (b"/x/../admin", b"/admin"),
        (b"/x/%2e%2e/admin", b"/admin"),
        (b"/x/%2E%2e/admin", b"/admin"),
        (b"/%2e/admin", b"/admin"),
        (b"/admin/./", b"/admin/"),
        (b"/admin/x/..", b"/admin/"),
        (b"/admin/.", b"/admin/"),
        (b"/..", b"/"),
        (b"/../../admin", b"/admin"),
        (b"/a/b/c/./../../g", b"/a/g"),  # RFC 3986 5.2.4's example
        (b"/mid/content=5/../6", b"/mid/6"),  # and its second one
        # merged slashes
        (b"//admin", b"/admin"),
        (b"///admin", b"/admin"),
        (b"/admin//x///y", b"/admin/x/y"),
        (b"//", b"/"),
        # a backslash is a slash (as Envoy's canonicalizer and Windows backends read it)
        (b"/x\\..\\admin", b"/admin"),
        (b"/\\admin", b"/admin"),
        # "*" (OPTIONS *) is not a path
        (b"*", b"*"),
    ],
)
def test_default_normalization(path: bytes, expected: bytes) -> None:
    assert norm(path) == (expected, False)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/admin%2F", b"/admin/"),
        (b"/admin%2f", b"/admin/"),
        (b"/%2Fadmin", b"/admin"),
        (b"/x%2F..%2Fadmin", b"/admin"),
        (b"/admin%5Cx", b"/admin/x"),
        (b"/a%5c%2e%2e%5cadmin", b"/admin"),
        (b"/a%2Fb?", b"/a/b?"),  # the caller passes the path only; "?" is data here
    ],
)
def test_escaped_slashes_unescape_and_redirect(path: bytes, expected: bytes) -> None:
    assert norm(path) == (expected, True)


@pytest.mark.parametrize("bad", [b"/%", b"/%4", b"/%zz", b"/a%g1", b"/%%41", b"/x/%2"])
def test_invalid_percent_encoding_is_an_error(bad: bytes) -> None:
    with pytest.raises(PathError):
        norm(bad)


# --------------------------------------------------------------------------- options


def test_everything_off_is_the_identity() -> None:
    assert not OFF.active
    for path in (b"/%61dmin", b"//admin", b"/x/../admin", b"/admin%2F", b"/%zz"):
        assert norm(path, OFF) == (path, False)


def test_without_normalization_only_slashes_are_merged() -> None:
    policy = PathPolicy(normalize=False)
    assert norm(b"//x/../%61dmin", policy) == (b"/x/../%61dmin", False)
    assert norm(b"/%zz//a", policy) == (b"/%zz/a", False)  # not decoded, not refused


def test_without_merging_empty_segments_stay() -> None:
    policy = PathPolicy(merge_slashes=False)
    assert norm(b"//admin", policy) == (b"//admin", False)
    assert norm(b"/x/..//admin", policy) == (b"//admin", False)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (EscapedSlashes.KEEP, (b"/a%2Fb/%5C", False)),
        (EscapedSlashes.UNESCAPE_AND_FORWARD, (b"/a/b/", False)),
        (EscapedSlashes.UNESCAPE_AND_REDIRECT, (b"/a/b/", True)),
    ],
)
def test_escaped_slash_actions(action: EscapedSlashes, expected: tuple[bytes, bool]) -> None:
    assert norm(b"/a%2fb/%5c", PathPolicy(escaped_slashes=action)) == expected


def test_escaped_slash_reject() -> None:
    with pytest.raises(PathError):
        norm(b"/a%2Fb", PathPolicy(escaped_slashes=EscapedSlashes.REJECT))
    assert norm(b"/a%2541", PathPolicy(escaped_slashes=EscapedSlashes.REJECT)) == (
        b"/a%2541",
        False,
    )


def test_kept_escaped_slashes_are_not_path_separators() -> None:
    policy = PathPolicy(escaped_slashes=EscapedSlashes.KEEP)
    assert norm(b"/x%2F..%2Fadmin", policy) == (b"/x%2F..%2Fadmin", False)


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("target", "strip", "expected"),
    [
        (b"/admin#frag", True, (b"/admin", b"")),
        (b"/a?x=1#f", True, (b"/a", b"x=1")),
        (b"/a#f?x=1", True, (b"/a", b"")),
        (b"/a?x=%2F..//", True, (b"/a", b"x=%2F..//")),  # the query is never touched
        (b"/admin#frag", False, (b"/admin#frag", b"")),
        (b"/a?x=1#f", False, (b"/a", b"x=1#f")),
        (b"/a", True, (b"/a", b"")),
    ],
)
def test_split_target(target: bytes, strip: bool, expected: tuple[bytes, bytes]) -> None:
    assert split_target(target, strip_fragment=strip) == expected


def test_remove_dot_segments_keeps_the_root() -> None:
    assert remove_dot_segments(b"/") == b"/"
    assert remove_dot_segments(b"/.") == b"/"
    assert remove_dot_segments(b"/a/..") == b"/"
    assert remove_dot_segments(b"/a/../..") == b"/"


# --------------------------------------------------------------------------- properties

_PIECES = st.sampled_from(
    [
        *(b"/", b"//", b".", b"..", b"a", b"B", b"~", b"admin", b"\\"),
        *(b"%2e", b"%2E", b"%2f", b"%5C", b"%61", b"%3a", b"%25", b"%e2%82%ac"),
        *(b"%", b"%4", b"%zz"),
    ]
)
_PATHS = st.builds(lambda parts: b"/" + b"".join(parts), st.lists(_PIECES, max_size=12)) | (
    st.binary(max_size=40).map(lambda b: b"/" + b)
)
_POLICIES = st.builds(
    PathPolicy,
    normalize=st.booleans(),
    merge_slashes=st.booleans(),
    escaped_slashes=st.sampled_from(list(EscapedSlashes)),
)

_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_DOT_SEGMENT = re.compile(rb"(^|/)\.\.?(/|$)")


@settings(max_examples=400, deadline=None)
@given(_PATHS, _POLICIES)
@example(b"/a/%2e%2e%2f..", EDGE_PATH_POLICY)
@example(b"/%2e%2e/%2e", EDGE_PATH_POLICY)
def test_properties(path: bytes, policy: PathPolicy) -> None:
    try:
        out, redirect = normalize_path(path, policy)
    except PathError:
        return  # the only error it may raise (the caller answers 400)
    assert out[:1] == b"/"
    # idempotent: the result is a fixed point, and never asks for another redirect
    assert normalize_path(out, policy) == (out, False)
    if policy.normalize:
        assert _DOT_SEGMENT.search(out) is None, out
        assert b"\\" not in out
        for m in re.finditer(rb"%(..)", out):
            assert (
                int(m[1], 16)
                not in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
            )
    if policy.merge_slashes:
        assert b"//" not in out
    if policy.escaped_slashes is not EscapedSlashes.KEEP:
        assert re.search(rb"%(2[fF]|5[cC])", out) is None
    if redirect:
        assert policy.escaped_slashes is EscapedSlashes.UNESCAPE_AND_REDIRECT
