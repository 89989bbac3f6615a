"""Header sections as real mail clients write them, and the From forms issue 16 found
or feared; shared by the unit and integration tests of the From/Sender check
(policy/sender.py). Written for these tests from how each client's messages look
(field order, folding, encoded words, Message-ID shapes); the account is
``alice@example.org`` and the forger's address ``ceo@bank.example``."""

from __future__ import annotations

OWNER = "alice@example.org"
FORGED = "ceo@bank.example"

#: Thunderbird 115: UTF-8 format=flowed, From after To, a plain display name.
THUNDERBIRD = (
    "Message-ID: <3f2c1a9e-8d1b-4c5e-9a77-2b6f0e1d4c3a@example.org>\r\n"
    "Date: Tue, 1 Dec 2026 09:14:27 +0100\r\n"
    "MIME-Version: 1.0\r\n"
    "User-Agent: Mozilla Thunderbird\r\n"
    "Content-Language: en-US\r\n"
    "To: Bob Receiver <bob@example.net>\r\n"
    "From: Alice Example <{sender}>\r\n"
    "Subject: Quarterly figures\r\n"
    "Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"
    "Content-Transfer-Encoding: 7bit\r\n"
)

#: Apple Mail 16: From first, tab-folded Content-Type, an escaped comment in
#: Mime-Version.
APPLE_MAIL = (
    "From: Alice Example <{sender}>\r\n"
    "Content-Type: text/plain;\r\n"
    "\tcharset=us-ascii\r\n"
    "Content-Transfer-Encoding: 7bit\r\n"
    "Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))\r\n"
    "Subject: Lunch\r\n"
    "Message-Id: <8C1F5D2A-0B3E-4F6A-9D7C-5E2B1A0F3C4D@example.org>\r\n"
    "Date: Tue, 1 Dec 2026 09:20:11 +0100\r\n"
    "To: Bob Receiver <bob@example.net>\r\n"
    "X-Mailer: Apple Mail (2.3774.600.62)\r\n"
)

#: Outlook 16: "Last, First" quoted display names, an encoded-word Subject, a
#: folded multipart boundary, Thread-Index.
OUTLOOK = (
    'From: "Example, Alice" <{sender}>\r\n'
    'To: "Receiver, Bob" <bob@example.net>\r\n'
    "Subject: =?utf-8?Q?R=C3=A9union_budg=C3=A9taire?=\r\n"
    "Date: Tue, 1 Dec 2026 09:31:02 +0100\r\n"
    "Message-ID: <000001db4a2c$1f2e3d40$5d6c7b80$@example.org>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/alternative;\r\n"
    '\tboundary="----=_NextPart_000_0001_01DB4A34.80F2A540"\r\n'
    "X-Mailer: Microsoft Outlook 16.0\r\n"
    "Thread-Index: AdtKLB8uPUBdbHuAQ2K5nZ3fGm4xQw==\r\n"
    "Content-Language: fr-fr\r\n"
)

#: Outlook with a Latin-1 encoded-word display name.
OUTLOOK_LATIN1 = (
    "From: =?iso-8859-1?Q?J=FCrgen_M=FCller?= <{sender}>\r\n"
    "To: <bob@example.net>\r\n"
    "Subject: Termin\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
)

CLIENTS = {
    "thunderbird": THUNDERBIRD,
    "apple-mail": APPLE_MAIL,
    "outlook": OUTLOOK,
    "outlook-latin1": OUTLOOK_LATIN1,
}


def client_header(client: str, sender: str = OWNER) -> str:
    return CLIENTS[client].replace("{sender}", sender)


#: Header sections that name the forger where a reader shows the author; each must be
#: refused for alice (name: header section).
FORGERIES = {
    # RFC 5322 §4.5.1 obs-from: white space before the colon (the bypass found).
    "space-before-colon": f"Subject: hi\r\nFrom : {FORGED}\r\nTo: bob@example.net\r\n",
    "tab-before-colon": f"Subject: hi\r\nFrom\t: {FORGED}\r\nTo: bob@example.net\r\n",
    "first-field-space": f"From : {FORGED}\r\nSubject: hi\r\n",
    "upper-case-name": f"FROM: {FORGED}\r\nSubject: hi\r\n",
    "folded": f"Subject: hi\r\nFrom: Chief Executive\r\n\t<{FORGED}>\r\n",
    "second-from": f"From: {OWNER}\r\nSubject: hi\r\nFrom: {FORGED}\r\n",
    "group": f"From: Board: {OWNER}, {FORGED};\r\nSubject: hi\r\n",
    "comment": f"From: {OWNER} ({FORGED})\r\nSubject: hi\r\n",
    "display-name": f'From: "{FORGED}" <{OWNER}>\r\nSubject: hi\r\n',
    "encoded-display-name": f"From: =?utf-8?q?=3C{FORGED.replace('@', '=40')}=3E?= <{OWNER}>\r\n",
    "address-then-angle": f"From: {OWNER} <{FORGED}>\r\nSubject: hi\r\n",
    "route-address": f"From: <@relay.example:{FORGED}>\r\nSubject: hi\r\n",
    "empty-from": "From: \r\nSubject: hi\r\n",
    "sender": f"From: {OWNER}\r\nSender: {FORGED}\r\nSubject: hi\r\n",
    "sender-space-before-colon": f"From: {OWNER}\r\nSender : {FORGED}\r\n",
    # Audit B: look-alike "@" and "." in a display name (NFKC makes them real).
    "fullwidth-at-display-name": f'From: "ceo\uff20bank.example" <{OWNER}>\r\n',
    "small-at-display-name": f'From: "ceo\ufe6bbank.example" <{OWNER}>\r\n',
    "fullwidth-dot-comment": f'From: {OWNER} (ceo@bank\uff0eexample)\r\n',
    "encoded-fullwidth-at": f"From: =?utf-8?b?Y2Vv77ygYmFuay5leGFtcGxl?= <{OWNER}>\r\n",
    # Audit P: an address split by characters a reader draws as nothing, or with
    # IDNA's ideographic full stop (UTS #46 maps it to ".").
    "zero-width-space-display-name": f'From: "ceo\u200b@bank.example" <{OWNER}>\r\n',
    "soft-hyphen-display-name": f'From: "ceo@bank\u00ad.example" <{OWNER}>\r\n',
    "word-joiner-comment": f"From: {OWNER} (ceo@\u2060bank.example)\r\n",
    "bidi-mark-display-name": f'From: "ceo\u200e@bank.example" <{OWNER}>\r\n',
    "encoded-zero-width-space": f"From: =?utf-8?q?ceo=E2=80=8B=40bank=2Eexample?= <{OWNER}>\r\n",
    "ideographic-full-stop": f'From: "ceo@bank\u3002example" <{OWNER}>\r\n',
    "halfwidth-ideographic-full-stop": f'From: "ceo@bank\uff61example" <{OWNER}>\r\n',
    # Audit P: RFC 5322's quoted local part of the forged address in a display name.
    "quoted-local-part-display-name": f'From: "\\"ceo\\"@bank.example" <{OWNER}>\r\n',
    "encoded-quoted-local-part": f"From: =?utf-8?q?=22ceo=22=40bank=2Eexample?= <{OWNER}>\r\n",
    # A single-label domain in a display name or comment: an address to a reader on
    # a network where "localhost" or "intranet" resolves (only dotted ones were seen).
    "single-label-display-name": f'From: "ceo@localhost" <{OWNER}>\r\n',
    "single-label-comment": f"From: {OWNER} (admin@intranet)\r\n",
    "encoded-single-label": f"From: =?utf-8?q?admin=40intranet?= <{OWNER}>\r\n",
    "sender-single-label-display-name": f'From: {OWNER}\r\nSender: "root@localhost" <{OWNER}>\r\n',
    # Audit h19: what a reader trims around a field name. Thunderbird's JSMime
    # calls JavaScript's trim() on the text before the colon, which also removes a
    # vertical tab, a form feed, a no-break space and a BOM; and the first line of
    # a header section has no field above it to fold into.
    "vertical-tab-before-colon": f"From: {OWNER}\r\nFrom\v: {FORGED}\r\n",
    "form-feed-before-colon": f"From: {OWNER}\r\nFrom\f: {FORGED}\r\n",
    "form-feed-before-name": f"From: {OWNER}\r\n\fFrom: {FORGED}\r\n",
    "no-break-space-before-colon": f"From: {OWNER}\r\nFrom\u00a0: {FORGED}\r\n",
    "bom-before-name": f"From: {OWNER}\r\n\ufeffFrom: {FORGED}\r\n",
    "indented-first-line": f" From: {FORGED}\r\nFrom: {OWNER}\r\n",
    "tab-indented-first-line": f"\tFrom: {FORGED}\r\nFrom: {OWNER}\r\n",
    "sender-form-feed-before-colon": f"From: {OWNER}\r\nSender\f: {FORGED}\r\n",
}

#: Header sections alice may send (name: header section).
ACCEPTED = {
    "plain": f"From: {OWNER}\r\nSubject: hi\r\n",
    "folded": f"Subject: hi\r\nFrom: Alice\r\n <{OWNER}>\r\n",
    "group-of-one": f"From: Me: {OWNER};\r\n",
    "domain-case": "From: alice@EXAMPLE.org\r\n",
    "obsolete-own": f"From : {OWNER}\r\n",
    "sender-own": f"From: {OWNER}\r\nSender: {OWNER}\r\n",
    "utf8-display-name": f"From: J\u00fcrgen <{OWNER}>\r\n",
    "fullwidth-display-name": f"From: \uff21\uff4c\uff49\uff43\uff45\u3000\u5c71\u7530 <{OWNER}>\r\n",
    "own-fullwidth-at": f'From: "alice\uff20example.org" <{OWNER}>\r\n',
    "own-zero-width-space": f'From: "alice\u200b@example.org" <{OWNER}>\r\n',
    "own-quoted-local-part": 'From: "\\"alice\\"@example.org" <"alice"@example.org>\r\n',
    "quoted-nickname": f'From: "Alice \\"Al\\" Example" <{OWNER}>\r\n',
    "at-sign-between-words": f'From: "Alice @ Home" <{OWNER}>\r\n',
    "handle-without-local-part": f'From: "Alice (@alice)" <{OWNER}>\r\n',
    "zero-width-joiner-name": f"From: \u0915\u094d\u200d\u0937 \U0001f469\u200d\U0001f4bb <{OWNER}>\r\n",
    # A folded line that reads "From:" continues the field above it (RFC 5322
    # §2.2.3): a Subject folded before the word is no second From.
    "folded-subject-with-from": f"From: {OWNER}\r\nSubject: notes\r\n From: {FORGED}\r\n",
    "own-form-feed-before-colon": f"From\f: {OWNER}\r\n",
}
