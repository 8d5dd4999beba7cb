"""Admission-style validation: raw manifest mappings -> typed ``model`` objects.

``reader`` holds the rules and helpers every kind shares (``Obj``, ``Issues``, syntaxes,
metadata); each other module validates one kind family.  ``load`` calls the
``parse_<kind>`` functions.
"""
