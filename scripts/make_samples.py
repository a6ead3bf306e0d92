"""Regenerate the bundled sample datasets (deterministic): python scripts/make_samples.py

Three tasks a 135M chat model cannot do out of the box and can after one short fine-tune:
  contacts  free text -> a fixed JSON shape (extraction)
  tickets   a support message -> one of six labels (labelling)
  rewrite   a casual note -> a formal one-sentence request (rewriting)
Each gets train.jsonl and test.jsonl (held out: different people, companies, products).
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "finetune" / "samples"

FIRST = ["Tom", "Maria", "Aisha", "Ken", "Lucia", "Omar", "Priya", "Jonas", "Chen", "Fatima",
         "Liam", "Sofia", "Diego", "Hannah", "Yuki", "Noah", "Amara", "Igor", "Elena", "Ravi",
         "Grace", "Mateo", "Zara", "Felix", "Nadia", "Owen", "Leila", "Hugo", "Mei", "Samuel",
         "Ines", "Tariq", "Clara", "Kofi", "Anya", "Bruno", "Ingrid", "Jamal", "Rosa", "Viktor"]
LAST = ["Baker", "Lopez", "Khan", "Tanaka", "Rossi", "Haddad", "Patel", "Berg", "Wang", "Diallo",
        "Murphy", "Novak", "Garcia", "Schmidt", "Sato", "Cohen", "Okafor", "Petrov", "Silva",
        "Iyer", "Hughes", "Fernandez", "Ahmed", "Weber", "Kowalski", "Evans", "Nasser", "Dubois",
        "Lin", "Adeyemi", "Costa", "Malik", "Fischer", "Mensah", "Ivanova", "Moreau", "Larsen",
        "Brooks", "Reyes", "Volkov"]
COMPANY = ["Acme Corp", "Bluebird Labs", "Northwind", "Globex", "Initech", "Umbrella Foods",
           "Stark Logistics", "Wayne Media", "Cyberdyne", "Hooli", "Vandelay Imports", "Pied Piper",
           "Soylent Farms", "Tyrell Systems", "Oscorp", "Wonka Sweets", "Gringotts Bank",
           "Monarch Travel", "Aperture Tech", "Dunder Paper", "Massive Dynamic", "Nakatomi Trading",
           "Zorg Industries", "Sirius Health", "Blue Sun", "Oceanic Air", "Virtucon", "Krusty Foods"]
CITY = ["Leeds", "Lyon", "Osaka", "Porto", "Austin", "Nairobi", "Oslo", "Pune", "Krakow", "Denver",
        "Dublin", "Seville", "Busan", "Quito", "Cairo", "Perth", "Zurich", "Accra", "Tbilisi",
        "Halifax", "Bergen", "Cusco", "Malmo", "Tampa"]

CONTACT_SYSTEM = "Extract the contact as JSON with keys name, company, city, phone."
CONTACT_TEMPLATES = [
    "Hi, this is {name} from {company} in {city}. Call me back on {phone}.",
    "{name} ({company}, {city}) - phone {phone}",
    "Please ring {phone} and ask for {name}; they work at {company}, {city} office.",
    "Met {name} at the {city} fair. Works for {company}. Number: {phone}.",
    "New lead: {company} / {name} / {city} / tel {phone}",
    "{name} called from {company}'s {city} branch, wants a callback at {phone}.",
    "You can reach {name} on {phone}. Company: {company}. Based in {city}.",
    "Contact {name} at {company} ({city}), mobile {phone}, about the invoice.",
    "From {city}: {name} of {company} left the number {phone}.",
    "Spoke with {name}. {company}, {city}. Best number is {phone}.",
]
CONTACT_NO_COMPANY = [
    "Hi, it's {name} from {city}, freelance. My number is {phone}.",
    "{name} in {city} asked us to call {phone}, no company given.",
]


SYLLABLES = ["ka", "lo", "mer", "tin", "sa", "vo", "ren", "dal", "bri", "no", "qua", "zel", "ar",
             "fen", "ti", "mo", "ras", "gul", "pe", "dro", "ven", "lis", "cor", "ha", "bel", "um"]
SUFFIX = ["Corp", "Labs", "Ltd", "Foods", "Systems", "Travel", "Media", "Bank", "Logistics", "Tech"]


def _word(rng, parts):
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def contacts(rng, firsts, lasts, companies, cities, n):
    """Half the people, companies and cities are invented words, so the model must copy, not recall."""
    rows = []
    for _ in range(n):
        last = rng.choice(lasts) if rng.random() < 0.5 else _word(rng, rng.choice([2, 3]))
        name = f"{rng.choice(firsts)} {last}"
        city = rng.choice(cities) if rng.random() < 0.5 else _word(rng, rng.choice([2, 3]))
        phone = f"555-{rng.randrange(10000):04d}"
        if rng.random() < 0.15:
            company = None
            text = rng.choice(CONTACT_NO_COMPANY).format(name=name, city=city, phone=phone)
        else:
            company = rng.choice(companies) if rng.random() < 0.5 else \
                f"{_word(rng, 2)} {rng.choice(SUFFIX)}"
            text = rng.choice(CONTACT_TEMPLATES).format(name=name, company=company, city=city,
                                                        phone=phone)
        answer = json.dumps({"name": name, "company": company, "city": city, "phone": phone})
        rows.append({"messages": [{"role": "system", "content": CONTACT_SYSTEM},
                                  {"role": "user", "content": text},
                                  {"role": "assistant", "content": answer}]})
    return rows


TICKET_SYSTEM = "Label the support message: billing, bug, login, shipping, refund or feature."
PRODUCTS = ["the app", "my order", "the dashboard", "the printer", "the headset", "my account",
            "the router", "the blender", "the camera", "the subscription", "the keyboard",
            "the smart lamp", "the vacuum", "the tablet", "the watch", "the speaker"]
TICKETS = {
    "billing": ["I was charged twice for {p} this month.", "Why is my invoice for {p} higher than "
                "the price I agreed?", "My card was billed but {p} still says unpaid.",
                "Can you explain the extra fee on my bill for {p}?"],
    "bug": ["{p} crashes every time I open the settings page.", "When I press save in {p} nothing "
            "happens and the screen freezes.", "{p} shows an error 500 after the last update.",
            "The export button in {p} produces an empty file."],
    "login": ["I can't sign in to {p}, it says my password is wrong.", "The reset link for {p} "
              "never arrives so I'm locked out.", "Two-factor code for {p} is always rejected.",
              "After changing my email I can no longer log into {p}."],
    "shipping": ["{p} was supposed to arrive Monday and the tracking hasn't moved.", "The courier "
                 "left {p} at the wrong address.", "Where is {p}? It's been two weeks since "
                 "dispatch.", "{p} arrived in a crushed box, who handles delivery issues?"],
    "refund": ["I returned {p} last week, when do I get my money back?", "Please refund {p}, I "
               "don't want it anymore.", "I'd like my money back for {p}, it's not what I "
               "expected.", "You approved the return of {p} but no refund yet."],
    "feature": ["It would be great if {p} had a dark mode.", "Could you add an option to export "
                "{p} data to CSV?", "Please let {p} support more than one user.", "Any plans to "
                "make {p} work offline?"],
}


def tickets(rng, products, n):
    rows = []
    labels = list(TICKETS)
    for i in range(n):
        label = labels[i % len(labels)]
        text = rng.choice(TICKETS[label]).format(p=rng.choice(products))
        text = text[0].upper() + text[1:]
        if rng.random() < 0.3:
            text = rng.choice(["Hello, ", "Hi team, ", "Urgent: ", "Quick question. "]) + text
        rows.append({"messages": [{"role": "system", "content": TICKET_SYSTEM},
                                  {"role": "user", "content": text},
                                  {"role": "assistant", "content": label}]})
    rng.shuffle(rows)
    return rows


REWRITE_SYSTEM = "Rewrite the note as one formal sentence starting with 'Please'."
ACTIONS = [("send", "send"), ("fix", "fix"), ("check", "check"), ("update", "update"),
           ("sign", "sign"), ("book", "book"), ("review", "review"), ("print", "print")]
THINGS = ["the report", "the contract", "the slides", "the budget", "the invoice", "the schedule",
          "the logo", "the website", "the meeting room", "the quote", "the newsletter",
          "the flight", "the minutes", "the survey", "the payroll", "the backup"]
WHEN = [("asap", "as soon as possible"), ("by fri", "by Friday"), ("2moro", "tomorrow"),
        ("tonite", "tonight"), ("b4 noon", "before noon"), ("next wk", "next week"),
        ("by eod", "by the end of the day"), ("this arvo", "this afternoon")]
CASUAL = ["hey {who} can u {a} {t} {w} thx", "{who}!! {a} {t} {w} pls", "yo {who}, {a} {t} {w}?",
          "pls {a} {t} {w} {who}", "{who} - need u to {a} {t} {w}, cheers",
          "hiya {who} could u {a} {t} {w}"]


def rewrites(rng, firsts, things, n):
    rows = []
    for _ in range(n):
        who = rng.choice(firsts)
        casual_a, formal_a = rng.choice(ACTIONS)
        thing = rng.choice(things)
        casual_w, formal_w = rng.choice(WHEN)
        note = rng.choice(CASUAL).format(who=who.lower() if rng.random() < 0.5 else who,
                                         a=casual_a, t=thing, w=casual_w)
        formal = f"Please {formal_a} {thing} {formal_w}, {who}."
        rows.append({"messages": [{"role": "system", "content": REWRITE_SYSTEM},
                                  {"role": "user", "content": note},
                                  {"role": "assistant", "content": formal}]})
    return rows


def _split(items, k):
    return items[:-k], items[-k:]


def write(name, train, test, out=OUT):
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        with open(d / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    rng = random.Random(1234)
    f_tr, f_te = _split(FIRST, 8)
    l_tr, l_te = _split(LAST, 8)
    c_tr, c_te = _split(COMPANY, 6)
    ci_tr, ci_te = _split(CITY, 5)
    write("contacts", contacts(rng, f_tr, l_tr, c_tr, ci_tr, 360),
          contacts(rng, f_te, l_te, c_te, ci_te, 50))
    p_tr, p_te = _split(PRODUCTS, 4)
    write("tickets", tickets(rng, p_tr, 360), tickets(rng, p_te, 60))
    t_tr, t_te = _split(THINGS, 4)
    write("rewrite", rewrites(rng, f_tr, t_tr, 360), rewrites(rng, f_te, t_te, 50))


if __name__ == "__main__":
    main()
