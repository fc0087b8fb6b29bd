"""Kinds of job beyond the farm's own, each loaded only when the setting `kind_modules` names it
(farm.jobkinds, docs/kinds.md)."""
