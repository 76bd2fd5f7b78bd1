"""chitchat: casual multi-turn chats between students on a topic (BYU Chit-Chat Challenge), as messages."""

from __future__ import annotations

import json
import zipfile
from collections import Counter

from instructune.data.packs.base import DataPack, Rows
from instructune.data.packs.text import clean

CHAT_TURNS = 8
"""Turns kept from the start of each conversation (the longest run to 564)."""


def read(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
    """JSON {id: {prompt, messages: [[{text, sender}, ...] per turn]}}: two people take turns. The one who
    opens is the user, the other the assistant; the topic they were given (if any) becomes the system message."""
    rows: Rows = []
    for key, conv in sorted(json.loads(zf.read(member)).items()):
        turns = [clean("\n".join(m["text"] for m in turn if m.get("text"))) for turn in conv["messages"]]
        turns = turns[:CHAT_TURNS]
        turns = turns[:len(turns) // 2 * 2]  # end on the assistant's turn
        if len(turns) < 2:
            dropped["no reply to the opening message"] += 1
        elif not all(turns):
            dropped["an empty turn"] += 1
        else:
            topic = clean(conv.get("prompt") or "")
            messages = [{"role": "system", "content": f"A friendly chat between students. Topic: {topic}"}] if topic else []
            messages += [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]
            rows.append((key, {"messages": messages}))
    return rows


PACK = DataPack(
    name="chitchat",
    description="Casual multi-turn chats between students on a given topic (BYU Chit-Chat Challenge)",
    task="chat",
    package="chitchat-dataset",
    version="0.9.0",
    member="chitchat_dataset/dataset.json",
    licence="MIT (chitchat-dataset)",
    text_field="messages",
    reader=read,
    format="messages",
)
