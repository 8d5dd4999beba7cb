"""HTTPRoute / GRPCRoute filters (header modifiers, redirect, rewrite, mirror, CORS), backendRefs.

Admission-style validation of one kind family (see ``reader`` for the rules and helpers).

Pure module: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence

from gatewayd.routing.config import model as m
from gatewayd.routing.config.validate.reader import (
    CORS_ORIGIN,
    HEADER_NAME,
    HTTP_METHODS,
    PRECISE_HOSTNAME,
    REDIRECT_STATUS_CODES,
    Obj,
    show,
    unique_names,
)
from gatewayd.routing.config.validate.refs import (
    BACKEND_OBJECT_REF_FIELDS,
    parse_backend_object_ref,
    parse_local_ref,
    read_port,
)

# --------------------------------------------------------------------------- filters

_FILTER_FIELD = {
    m.FilterType.REQUEST_HEADER_MODIFIER: "requestHeaderModifier",
    m.FilterType.RESPONSE_HEADER_MODIFIER: "responseHeaderModifier",
    m.FilterType.REQUEST_REDIRECT: "requestRedirect",
    m.FilterType.URL_REWRITE: "urlRewrite",
    m.FilterType.REQUEST_MIRROR: "requestMirror",
    m.FilterType.CORS: "cors",
    m.FilterType.EXTENSION_REF: "extensionRef",
}
HTTP_FILTER_TYPES = (
    m.FilterType.REQUEST_HEADER_MODIFIER,
    m.FilterType.RESPONSE_HEADER_MODIFIER,
    m.FilterType.REQUEST_MIRROR,
    m.FilterType.REQUEST_REDIRECT,
    m.FilterType.URL_REWRITE,
    m.FilterType.EXTENSION_REF,
    m.FilterType.CORS,
)
GRPC_FILTER_TYPES = (
    m.FilterType.RESPONSE_HEADER_MODIFIER,
    m.FilterType.REQUEST_HEADER_MODIFIER,
    m.FilterType.REQUEST_MIRROR,
    m.FilterType.EXTENSION_REF,
)
HEADER_FILTER_FIELDS = ("set", "add", "remove")
HEADER_FIELDS = ("name", "value")
PATH_MODIFIER_FIELDS = ("type", "replaceFullPath", "replacePrefixMatch")
REDIRECT_FIELDS = ("scheme", "hostname", "path", "port", "statusCode")
REWRITE_FIELDS = ("hostname", "path")
MIRROR_FIELDS = ("backendRef", "percent", "fraction")
FRACTION_FIELDS = ("numerator", "denominator")
CORS_FIELDS = (
    "allowOrigins",
    "allowCredentials",
    "allowMethods",
    "allowHeaders",
    "exposeHeaders",
    "maxAge",
)
EXTENSION_REF_FIELDS = ("group", "kind", "name")


def _headers(o: Obj, key: str) -> tuple[m.HTTPHeader, ...]:
    items = o.objs(key, HEADER_FIELDS, max_items=16)
    out = tuple(
        m.HTTPHeader(
            name=h.str_("name", required=True, min_len=1, max_len=256, syntax=HEADER_NAME) or "",
            value=h.str_("value", required=True, min_len=1, max_len=4096) or "",
        )
        for h in items
    )
    unique_names(
        [(h.name or None, i.path) for h, i in zip(out, items, strict=True)], o.issues, "header name"
    )
    return out


def parse_header_filter(o: Obj) -> m.HTTPHeaderFilter:
    return m.HTTPHeaderFilter(
        set=_headers(o, "set"),
        add=_headers(o, "add"),
        remove=o.strs("remove", max_items=16, unique=True),
    )


def parse_path_modifier(o: Obj) -> m.HTTPPathModifier:
    kind = o.enum_("type", m.PathModifierType, required=True)
    full = o.str_("replaceFullPath", max_len=1024)
    prefix = o.str_("replacePrefixMatch", max_len=1024)
    # CEL: "replaceFullPath must be specified when type is set to 'ReplaceFullPath'",
    # "type must be 'ReplaceFullPath' when replaceFullPath is set", and the same pair
    # for ReplacePrefixMatch.
    if kind is m.PathModifierType.REPLACE_FULL_PATH and not o.has("replaceFullPath"):
        o.add("replaceFullPath", "is required when type is ReplaceFullPath")
    if kind is m.PathModifierType.REPLACE_PREFIX_MATCH and not o.has("replacePrefixMatch"):
        o.add("replacePrefixMatch", "is required when type is ReplacePrefixMatch")
    if (
        kind is not None
        and kind is not m.PathModifierType.REPLACE_FULL_PATH
        and o.has("replaceFullPath")
    ):
        o.add("replaceFullPath", "must not be set unless type is ReplaceFullPath")
    if (
        kind is not None
        and kind is not m.PathModifierType.REPLACE_PREFIX_MATCH
        and o.has("replacePrefixMatch")
    ):
        o.add("replacePrefixMatch", "must not be set unless type is ReplacePrefixMatch")
    return m.HTTPPathModifier(
        type=kind or m.PathModifierType.REPLACE_FULL_PATH,
        replace_full_path=full,
        replace_prefix_match=prefix,
    )


def _path_modifier(o: Obj) -> m.HTTPPathModifier | None:
    sub = o.sub("path", PATH_MODIFIER_FIELDS)
    return None if sub is None else parse_path_modifier(sub)


def parse_redirect(o: Obj) -> m.HTTPRequestRedirectFilter:
    status = o.int_("statusCode", choices=REDIRECT_STATUS_CODES)
    return m.HTTPRequestRedirectFilter(
        scheme=o.str_("scheme", choices=("http", "https")),
        hostname=o.str_("hostname", min_len=1, max_len=253, syntax=PRECISE_HOSTNAME),
        path=_path_modifier(o),
        port=read_port(o),
        status_code=302 if status is None else status,
    )


def parse_rewrite(o: Obj) -> m.HTTPURLRewriteFilter:
    return m.HTTPURLRewriteFilter(
        hostname=o.str_("hostname", min_len=1, max_len=253, syntax=PRECISE_HOSTNAME),
        path=_path_modifier(o),
    )


def parse_mirror(o: Obj) -> m.HTTPRequestMirrorFilter:
    ref_obj = o.sub("backendRef", BACKEND_OBJECT_REF_FIELDS, required=True)
    ref = (
        parse_backend_object_ref(ref_obj)
        if ref_obj is not None
        else m.BackendObjectReference(name="")
    )
    percent = o.int_("percent", minimum=0, maximum=100)
    fraction: m.Fraction | None = None
    fo = o.sub("fraction", FRACTION_FIELDS)
    if fo is not None:
        numerator = fo.int_("numerator", required=True, minimum=0)
        denominator = fo.int_("denominator", minimum=1)
        fraction = m.Fraction(
            numerator=numerator or 0, denominator=100 if denominator is None else denominator
        )
        # CEL: "numerator must be less than or equal to denominator".
        if numerator is not None and numerator > fraction.denominator:
            fo.add(
                "numerator",
                f"must be less than or equal to denominator ({fraction.denominator}), "
                f"got {numerator}",
            )
    # CEL: "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter".
    if o.has("percent") and o.has("fraction"):
        o.add("", "only one of percent or fraction may be specified")
    return m.HTTPRequestMirrorFilter(backend_ref=ref, percent=percent, fraction=fraction)


def _star_alone(o: Obj, key: str, values: tuple[str, ...], what: str) -> None:
    # CEL: "AllowOrigins cannot contain '*' alongside other origins" (and the same for
    # allowMethods and allowHeaders).
    if "*" in values and len(values) > 1:
        o.add(key, f"cannot contain '*' alongside other {what}")


def parse_cors(o: Obj) -> m.HTTPCORSFilter:
    origins = o.strs(
        "allowOrigins", max_items=64, unique=True, min_len=1, max_len=253, syntax=CORS_ORIGIN
    )
    methods = o.strs("allowMethods", max_items=9, unique=True, choices=(*HTTP_METHODS, "*"))
    headers = o.strs(
        "allowHeaders", max_items=64, unique=True, min_len=1, max_len=256, syntax=HEADER_NAME
    )
    _star_alone(o, "allowOrigins", origins, "origins")
    _star_alone(o, "allowMethods", methods, "methods")
    _star_alone(o, "allowHeaders", headers, "headers")
    max_age = o.int_("maxAge", minimum=1)
    return m.HTTPCORSFilter(
        allow_origins=origins,
        allow_methods=methods,
        allow_headers=headers,
        expose_headers=o.strs(
            "exposeHeaders", max_items=64, unique=True, min_len=1, max_len=256, syntax=HEADER_NAME
        ),
        allow_credentials=bool(o.bool_("allowCredentials")),
        max_age=5 if max_age is None else max_age,
    )


@functools.cache
def _filter_shape(
    allowed: tuple[m.FilterType, ...],
) -> tuple[tuple[str, ...], tuple[str, ...], dict[m.FilterType, str]]:
    """For the filter types a route kind allows: the field names of a filter, the type
    names and each type's field (computed once per route kind: a few constants)."""
    field_names = ("type", *(_FILTER_FIELD[t] for t in allowed))
    return field_names, tuple(str(t.value) for t in allowed), {t: _FILTER_FIELD[t] for t in allowed}


def parse_filter(o: Obj, allowed: Sequence[m.FilterType]) -> m.HTTPRouteFilter:
    _, names, fields = _filter_shape(tuple(allowed))
    type_text = o.str_("type", required=True)
    ftype: m.FilterType | None = None
    if type_text is not None:
        if type_text in names:
            ftype = m.FilterType(type_text)
        else:
            o.add("type", f"unsupported filter type {show(type_text)}; allowed: {', '.join(names)}")
    for t, field_name in fields.items():
        # CEL: "filter.<field> must be nil if the filter.type is not <Type>" and
        # "filter.<field> must be specified for <Type> filter.type".
        if o.has(field_name) and ftype is not None and t is not ftype:
            o.add(
                field_name,
                f"must not be set when type is {ftype.value} (it belongs to type {t.value})",
            )
        if t is ftype and not o.has(field_name):
            o.add(field_name, f"is required when type is {t.value}")

    def sub(t: m.FilterType, fields: Collection[str]) -> Obj | None:
        return o.sub(_FILTER_FIELD[t], fields) if t in allowed else None

    rqh = sub(m.FilterType.REQUEST_HEADER_MODIFIER, HEADER_FILTER_FIELDS)
    rsh = sub(m.FilterType.RESPONSE_HEADER_MODIFIER, HEADER_FILTER_FIELDS)
    red = sub(m.FilterType.REQUEST_REDIRECT, REDIRECT_FIELDS)
    rew = sub(m.FilterType.URL_REWRITE, REWRITE_FIELDS)
    mir = sub(m.FilterType.REQUEST_MIRROR, MIRROR_FIELDS)
    cors = sub(m.FilterType.CORS, CORS_FIELDS)
    ext = sub(m.FilterType.EXTENSION_REF, EXTENSION_REF_FIELDS)
    return m.HTTPRouteFilter(
        type=ftype or m.FilterType.EXTENSION_REF,
        request_header_modifier=parse_header_filter(rqh) if rqh is not None else None,
        response_header_modifier=parse_header_filter(rsh) if rsh is not None else None,
        request_redirect=parse_redirect(red) if red is not None else None,
        url_rewrite=parse_rewrite(rew) if rew is not None else None,
        request_mirror=parse_mirror(mir) if mir is not None else None,
        cors=parse_cors(cors) if cors is not None else None,
        extension_ref=parse_local_ref(ext) if ext is not None else None,
    )


def parse_filters(o: Obj, allowed: Sequence[m.FilterType]) -> tuple[m.HTTPRouteFilter, ...]:
    if o.data.get("filters") is None:
        return ()  # absent (or null): nothing to read or check
    field_names = _filter_shape(tuple(allowed))[0]
    filters = tuple(parse_filter(f, allowed) for f in o.objs("filters", field_names, max_items=16))
    path = o.at("filters")
    types = [f.type for f in filters]
    # CEL: "May specify either httpRouteFilterRequestRedirect or
    # httpRouteFilterRequestRewrite, but not both".
    if m.FilterType.REQUEST_REDIRECT in types and m.FilterType.URL_REWRITE in types:
        o.issues.add(path, "RequestRedirect and URLRewrite filters must not be used together")
    # CEL: "<Type> filter cannot be repeated".
    for t in (
        m.FilterType.CORS,
        m.FilterType.REQUEST_HEADER_MODIFIER,
        m.FilterType.RESPONSE_HEADER_MODIFIER,
        m.FilterType.REQUEST_REDIRECT,
        m.FilterType.URL_REWRITE,
    ):
        if t in allowed and types.count(t) > 1:
            o.issues.add(path, f"{t.value} filter cannot be repeated (found {types.count(t)})")
    return filters


# --------------------------------------------------------------------------- backendRefs

_BACKEND_REF_FIELDS = (*BACKEND_OBJECT_REF_FIELDS, "weight")


def parse_backend_ref(o: Obj, filter_types: Sequence[m.FilterType] | None) -> m.BackendRef:
    weight = o.int_("weight", minimum=0, maximum=1_000_000)
    filters = parse_filters(o, filter_types) if filter_types is not None else ()
    return m.BackendRef(
        ref=parse_backend_object_ref(o),
        weight=1 if weight is None else weight,
        filters=filters,
    )


def parse_backend_refs(
    o: Obj,
    filter_types: Sequence[m.FilterType] | None,
    *,
    required: bool = False,
    min_items: int = 0,
) -> tuple[m.BackendRef, ...]:
    fields = _BACKEND_REF_FIELDS if filter_types is None else (*_BACKEND_REF_FIELDS, "filters")
    return tuple(
        parse_backend_ref(b, filter_types)
        for b in o.objs("backendRefs", fields, required=required, min_items=min_items, max_items=16)
    )
