"""Prints the newest mail of a Maildir (aiosmtpd's Mailbox handler writes one per message) as its
reader sees it: From, To, Subject, then the text part decoded (quoted-printable, charset).

    python3 mail.py MAILDIR

Exits 1, saying so on stderr, while the Maildir holds no mail.
"""

import email
import email.policy
import mailbox
import sys

box = mailbox.Maildir(sys.argv[1], create=False)
try:
    keys = list(box.keys())
except FileNotFoundError:
    keys = []
if not keys:
    sys.exit(f"no mail in {sys.argv[1]} yet")
newest = max(keys, key=lambda k: box.get_message(k).get_date())
msg = email.message_from_bytes(box.get_bytes(newest), policy=email.policy.default)
for name in ("From", "To", "Subject"):
    print(f"{name}: {msg[name]}")
print()
body = msg.get_body(preferencelist=("plain",))
print(body.get_content() if body is not None else "(no text part)")
