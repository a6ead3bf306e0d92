"""Regenerate the two benchmark tasks whose answers need small arithmetic or re-ordering
(deterministic): python scripts/make_bench_tasks.py

  dates     a free-text appointment -> 'YYYY-MM-DD HH:MM' (month names to numbers, 12-hour to
            24-hour times, day and month re-ordered)
  receipts  a short receipt of 2-3 lines (quantity x item at a price) -> the total, e.g. '23'
Each gets train.jsonl (400 rows) and test.jsonl (50 held-out rows: other events and shops) under
finetune/bench/tasks/, read by `python -m finetune bench defaults`. They are not bundled samples:
the Data tab offers the three samples only.
"""

import random
from pathlib import Path

from make_samples import write  # this folder is on the path when the script runs

OUT = Path(__file__).resolve().parent.parent / "finetune" / "bench" / "tasks"

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
DAYS_IN = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
EVENTS = ["Dentist", "Team meeting", "Haircut", "Call with Sam", "Lunch with Ana", "Yoga class",
          "Car service", "Parent evening", "Flight check-in", "Job interview", "Vet visit",
          "Piano lesson", "Book club", "Gym session", "Doctor", "Budget review", "Coffee with Li",
          "Plumber visit", "Dinner with Tom", "Eye test", "Tax advisor", "Football practice",
          "Board meeting", "Dance class", "Library talk", "Bank appointment", "Sprint demo",
          "Guitar lesson", "Physio", "Museum tour"]
DATES_SYSTEM = "Write the date and time of the appointment as YYYY-MM-DD HH:MM (24-hour clock)."
DATE_TEMPLATES = [
    "{event} on {month} {day}, {year} at {time}.",
    "{event}: {day} {month} {year}, {time}",
    "Reminder - {event} is on {month} {day} {year}, {time}.",
    "{event} booked for {time} on {day} {month} {year}.",
    "Can you make {event} at {time}, {month} {day}, {year}?",
    "{month} {day}, {year} - {event} - {time}",
    "Don't forget {event}, {time} on the {day} of {month} {year}.",
    "{event} moved to {day}/{monthnum}/{year} at {time}.",
]


def _time12(rng) -> tuple[str, int, int]:
    hour24, minute = rng.randrange(24), rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50, 55])
    hour12 = hour24 % 12 or 12
    suffix = rng.choice([("AM", "PM"), ("am", "pm"), ("a.m.", "p.m.")])[hour24 >= 12]
    return f"{hour12}:{minute:02d} {suffix}", hour24, minute


def dates(rng, events, n):
    rows = []
    for _ in range(n):
        year, month = rng.randrange(2024, 2028), rng.randrange(12)
        day = rng.randrange(1, DAYS_IN[month] + 1)
        time_text, hour, minute = _time12(rng)
        prompt = rng.choice(DATE_TEMPLATES).format(
            event=rng.choice(events), month=MONTHS[month], monthnum=month + 1, day=day,
            year=year, time=time_text).replace("..", ".")
        answer = f"{year}-{month + 1:02d}-{day:02d} {hour:02d}:{minute:02d}"
        rows.append(_row(DATES_SYSTEM, prompt, answer))
    return rows


ITEMS = ["coffee", "bagel", "tea", "muffin", "juice", "sandwich", "soup", "salad", "cookie",
         "water", "croissant", "toast", "smoothie", "wrap", "pie", "scone", "latte", "brownie",
         "donut", "yogurt", "pasta", "pizza slice", "bread roll", "cake", "chips", "apple",
         "banana", "noodles", "burger", "taco"]
SHOPS = ["Corner Cafe", "Bean There", "Daily Grind", "Sunny Deli", "Blue Door Bakery", "Quick Bite",
         "Green Bowl", "Harbor Kitchen", "Maple Diner", "Urban Pantry", "Lotus Noodle Bar",
         "Station Snacks", "Hilltop Cafe", "River Bistro", "Market Stall 9", "Oak Street Eats"]
RECEIPT_SYSTEM = "Add up the receipt. Answer with the total in euros, digits only."
LINE_STYLES = ["{qty} x {item} @ {price}", "{item} {qty} x {price}", "{qty} {item} at {price} each"]


def receipts(rng, shops, items, n):
    rows = []
    for _ in range(n):
        lines, total = [], 0
        style = rng.choice(LINE_STYLES)
        for item in rng.sample(items, rng.choice([2, 2, 3])):
            qty, price = rng.choice([1, 1, 1, 2, 2, 3]), rng.randrange(1, 10)
            total += qty * price
            lines.append(style.format(qty=qty, item=item, price=price))
        prompt = f"{rng.choice(shops)}\n" + "\n".join(lines)
        rows.append(_row(RECEIPT_SYSTEM, prompt, str(total)))
    return rows


def _row(system, prompt, answer):
    return {"messages": [{"role": "system", "content": system},
                         {"role": "user", "content": prompt},
                         {"role": "assistant", "content": answer}]}


def main():
    rng = random.Random(23)
    ev = EVENTS[:]
    rng.shuffle(ev)
    write("dates", dates(rng, ev[:24], 400), dates(rng, ev[24:], 50), OUT)
    it, sh = ITEMS[:], SHOPS[:]
    rng.shuffle(it)
    rng.shuffle(sh)
    # Held-out receipts: other shops, and items the training rows never name.
    write("receipts", receipts(rng, sh[:12], it[:24], 400), receipts(rng, sh[12:], it[24:], 50),
          OUT)


if __name__ == "__main__":
    main()
