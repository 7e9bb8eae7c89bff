"""Seed the app's settings document, and fan each user's `tags` out into a subcollection.

A script migration (`apply(ctx)`): not one document in, one document out. Copy it next to the two
examples in migrations/ to try it (`docshift run` previews every write with its diff). Every write
goes through docshift's guarded, journalled writer, so `docshift rollback RUN_ID --execute` puts
back exactly what was there before (it deletes the tag documents and the settings it created).
"""

from __future__ import annotations

from typing import Any

from docshift import DELETE

description = "seed settings and move user tags into a subcollection"

EVERY = 200
"""Users per checkpoint: a resume after a stop starts after the last user checkpointed."""


def apply(ctx: Any) -> None:
    if ctx.get("settings/app") is None:
        ctx.create("settings/app", {"tags_in": "subcollection", "schema": 2})
    # On resume, ctx.resume_key is the id of the last user checkpointed: skip the users before it.
    after = f"users/{ctx.resume_key}" if ctx.resume_key else None
    for done, user in enumerate(ctx.stream("users", start_after=after), start=1):
        tags = user.get("tags")
        if isinstance(tags, list):  # users already moved have no tags field: nothing to do
            for tag in tags:
                ctx.set(f"{user.path}/tags/{tag}", {"tag": tag, "user": user.id})
            ctx.update(user.path, {"tags": DELETE, "tag_count": len(tags)})
        if done % EVERY == 0:
            ctx.checkpoint(user.id)
