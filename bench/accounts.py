"""Signed-in simulated users for `bench.relay --signed-in`: `python -m bench.accounts N` makes N
accounts in the database of DJANGO_SETTINGS_MODULE / DATABASE_URL, signs each in with Django's
`login()` on a session of its own, and prints the session cookie's name and the N keys as JSON.

The accounts have no usable password: nobody can sign in with them, and their sessions end with
the run's database."""

from __future__ import annotations

import json
import sys
import uuid

BATCH = 500


def accounts_sign_in(count: int) -> dict[str, object]:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model, login
    from django.contrib.auth.hashers import make_password
    from django.http import HttpRequest
    from django.utils.module_loading import import_string

    session_store = import_string(f"{settings.SESSION_ENGINE}.SessionStore")
    user_model = get_user_model()
    run = uuid.uuid4().hex[:8]
    unusable = make_password(None)
    users = user_model.objects.bulk_create(
        [user_model(username=f"bench-{run}-{index}", password=unusable) for index in range(count)],
        batch_size=BATCH,
    )
    keys = []
    for user in users:
        request = HttpRequest()
        request.session = session_store()
        login(request, user)
        request.session.save()
        keys.append(request.session.session_key)
    return {"cookie": settings.SESSION_COOKIE_NAME, "sessions": keys}


if __name__ == "__main__":
    print(json.dumps(accounts_sign_in(int(sys.argv[1]))))
