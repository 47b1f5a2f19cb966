"""`contains_folded`: contains, in any letter case, folding every letter.

Django's `icontains` is SQLite's LIKE there, which folds only ASCII: "über" missed "Über". Both
sides are lowered instead (on SQLite by Python's lower(), see runs/signals.py). Registered on
text fields, so the admin console's `search_fields` can name it too.
"""

from __future__ import annotations

from typing import Any

from django.db.models import CharField, Lookup, TextField
from django.db.models.functions import Lower
from django.db.models.lookups import Contains


@CharField.register_lookup
@TextField.register_lookup
class ContainsFolded(Lookup):
    lookup_name = "contains_folded"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        folded = self.rhs.lower() if isinstance(self.rhs, str) else Lower(self.rhs)
        return compiler.compile(Contains(Lower(self.lhs), folded))
