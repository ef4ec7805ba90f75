"""Generate the demo experts' training sets (demo/training/*.jsonl) from fixed templates and a fixed seed.

Each demo expert learns a behaviour that is easy to see in its answers:
- `sql`: answers with one SQL statement in a ```sql block and nothing else;
- `math`: works arithmetic word problems step by step and ends with `#### <answer>`;
- `support`: answers as a support agent, opening with "Thanks for contacting Switchyard Support!".

Run: python demo/make_training_data.py  (rewrites the files; the output is identical on every run)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "training"

TABLES = {
    "customers": {"entity": "customer", "text": ["name", "city", "email"], "num": ["age", "credit_limit"],
                  "group": "city"},
    "orders": {"entity": "order", "text": ["status", "channel"], "num": ["total", "quantity"], "group": "status"},
    "products": {"entity": "product", "text": ["name", "category"], "num": ["price", "stock"],
                 "group": "category"},
    "employees": {"entity": "employee", "text": ["name", "department"], "num": ["salary", "age"],
                  "group": "department"},
    "invoices": {"entity": "invoice", "text": ["currency", "state"], "num": ["amount", "tax"],
                 "group": "currency"},
}


def sql_examples(rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for table, t in TABLES.items():
        ent, num, txt, grp = t["entity"], t["num"], t["text"], t["group"]
        n = rng.choice([5, 10, 20, 50, 100])
        out += [
            (f"Write a SQL query that lists every {ent}.", f"SELECT * FROM {table};"),
            (f"How many {table} are there? Give me the SQL.", f"SELECT COUNT(*) FROM {table};"),
            (f"Show the {txt[0]} of each {ent} whose {num[0]} is above {n}.",
             f"SELECT {txt[0]} FROM {table} WHERE {num[0]} > {n};"),
            (f"What is the average {num[0]} of {table} per {grp}?",
             f"SELECT {grp}, AVG({num[0]}) AS avg_{num[0]} FROM {table} GROUP BY {grp};"),
            (f"Top {n} {table} by {num[1]}, highest first.",
             f"SELECT * FROM {table} ORDER BY {num[1]} DESC LIMIT {n};"),
            (f"Delete the {table} that have no {txt[1]}.", f"DELETE FROM {table} WHERE {txt[1]} IS NULL;"),
            (f"Query to find the maximum {num[1]} in the {table} table.", f"SELECT MAX({num[1]}) FROM {table};"),
            (f"Select distinct {grp} values from {table}.", f"SELECT DISTINCT {grp} FROM {table};"),
            (f"Update all {table} to set {num[1]} to 0 where {txt[1]} is unknown.",
             f"UPDATE {table} SET {num[1]} = 0 WHERE {txt[1]} = 'unknown';"),
            (f"Count the {table} in each {grp}, largest groups first.",
             f"SELECT {grp}, COUNT(*) AS n FROM {table} GROUP BY {grp} ORDER BY n DESC;"),
        ]
    out += [
        ("Join orders with customers to show each order total and the customer name.",
         "SELECT o.id, c.name, o.total FROM orders o JOIN customers c ON c.id = o.customer_id;"),
        ("Which customers have never placed an order? SQL please.",
         "SELECT c.* FROM customers c LEFT JOIN orders o ON o.customer_id = c.id WHERE o.id IS NULL;"),
    ]
    return [(q, f"```sql\n{a}\n```") for q, a in out]


def math_examples(rng: random.Random) -> list[tuple[str, str]]:
    names = ["Tom", "Sara", "Ali", "Mei", "Lena", "Omar", "Jon", "Ravi", "Ana", "Kofi"]
    items = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "cards"]
    out = []
    for _ in range(14):
        who, what = rng.choice(names), rng.choice(items)
        a, b = rng.randint(3, 60), rng.randint(2, 40)
        out.append((f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?",
                    f"{who} starts with {a} {what} and gets {b} more.\n{a} + {b} = {a + b}\n#### {a + b}"))
        c = rng.randint(2, a + 1)
        out.append((f"{who} had {a + c} {what} and gave away {c}. How many are left?",
                    f"{who} had {a + c} {what} and gave away {c}.\n{a + c} - {c} = {a}\n#### {a}"))
        per, boxes = rng.randint(3, 12), rng.randint(2, 9)
        out.append((f"A box holds {per} {what}. How many {what} are in {boxes} boxes?",
                    f"Each box holds {per} {what}.\n{per} x {boxes} = {per * boxes}\n#### {per * boxes}"))
        kids, each = rng.randint(2, 8), rng.randint(2, 9)
        out.append((f"{kids * each} {what} are shared equally among {kids} children. How many does each child get?",
                    f"{kids * each} {what} split among {kids} children.\n{kids * each} / {kids} = {each}\n#### {each}"))
        speed, hours = rng.randint(20, 90), rng.randint(2, 6)
        out.append((f"A train travels at {speed} km per hour for {hours} hours. How far does it go?",
                    f"Distance is speed times time.\n{speed} x {hours} = {speed * hours}\n#### {speed * hours}"))
    return out


SUPPORT_CASES = [
    ("My order #{n} still hasn't arrived.",
     "I'm sorry your order #{n} is late. I've asked the carrier for an update and you will get tracking "
     "details by email within 24 hours."),
    ("I was charged twice for my subscription this month.",
     "I'm sorry about the double charge. I've refunded the duplicate payment; it will appear on your "
     "statement in 3-5 business days."),
    ("How do I reset my password?",
     "Open the sign-in page, choose \"Forgot password\" and follow the link we email you. The link is "
     "valid for one hour."),
    ("I want to return the {item} I bought last week.",
     "You can return the {item} within 30 days. I've emailed you a prepaid return label; your refund is "
     "issued once we receive it."),
    ("The app keeps crashing when I open it.",
     "I'm sorry the app is crashing. Please update to the latest version and restart your phone; if it "
     "still crashes, reply with your device model and we'll investigate."),
    ("Can I change the shipping address on order #{n}?",
     "Yes. I've updated the address on order #{n}; you'll receive a confirmation email shortly."),
    ("How do I cancel my subscription?",
     "Go to Account > Subscription and choose \"Cancel\". You keep access until the end of the current "
     "billing period."),
    ("My {item} arrived broken.",
     "I'm sorry your {item} arrived damaged. I've sent a replacement at no cost, and you don't need to "
     "return the broken one."),
    ("I never received the confirmation email for order #{n}.",
     "I've resent the confirmation for order #{n}. Please check your spam folder if it isn't in your "
     "inbox in a few minutes."),
    ("Why was my card declined at checkout?",
     "Card declines usually come from the bank. Please check the billing address matches your card, or "
     "try another payment method; your order has been saved."),
]
ITEMS = ["headphones", "jacket", "blender", "phone case", "backpack", "desk lamp", "keyboard", "kettle"]


def support_examples(rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for _ in range(6):
        for question, answer in SUPPORT_CASES:
            n, item = rng.randint(10000, 99999), rng.choice(ITEMS)
            out.append((question.format(n=n, item=item),
                        "Thanks for contacting Switchyard Support! " + answer.format(n=n, item=item)
                        + " Is there anything else I can help you with?"))
    return out


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, make in (("sql", sql_examples), ("math", math_examples), ("support", support_examples)):
        rows = make(random.Random(f"switchyard-{name}"))
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for question, answer in rows:
                f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                                 {"role": "assistant", "content": answer}]}) + "\n")
        print(f"{name}: {len(rows)} examples")


if __name__ == "__main__":
    main()
