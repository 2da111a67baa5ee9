"""Write data/toolace_sample.jsonl: a small synthetic sample in Team-ACE/ToolACE's row schema.

Every row is generated here (nothing downloaded) from a seeded RNG, so the file is reproducible:

    python scripts/make_toolace_sample.py [--rows 200] [--seed 0] [--out data/toolace_sample.jsonl]

It stands in for ToolACE on the CPU profile and is the text the tiny tokenizer is trained on.
Rows cover single and parallel calls, tool results followed by an answer, multi-turn follow-ups,
questions no tool fits, clarification requests, and nested/array/enum/null/negative arguments.
Rows written in the shapes real ToolACE rows take (issue #17) are mixed in: keyword, hyphenated
and `$` argument names, the Chinese system prompt, text followed by a call list, tool names inside
string arguments, punctuation in tool names, calls without arguments, the same tool twice,
JSON-spelled booleans, \\uXXXX escapes, `"required": null`, type unions, the "Historical dialog
data" wrapper, and text-only rows without tools.
The shipped sample is clean: malformed rows live in tests/test_toolace*.py.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.data.toolace import format_pythonic_calls  # noqa: E402

# ToolACE's system prompt: instructions, the JSON tool list, then the pythonic-format instruction.
SYSTEM_HEAD = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. \n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose. \n"
    "If none of the function can be used, point it out. If the given question lacks the parameters required "
    "by the function,\nalso point it out. You should only return the function call in tools call sections.\n"
    "Here is a list of functions in JSON format that you can invoke:\n"
)
SYSTEM_TAIL = (
    ". \nShould you decide to return the function call(s). \n"
    "Put it in the format of [func1(params_name=params_value, params_name2=params_value2...), func2(params)]\n\n"
    "NO other text MUST be included. \n"
)

CITIES = [  # name, country, latitude, longitude, timezone
    ("Paris", "France", 48.8566, 2.3522, "Europe/Paris"),
    ("Sydney", "Australia", -33.8688, 151.2093, "Australia/Sydney"),
    ("São Paulo", "Brazil", -23.5505, -46.6333, "America/Sao_Paulo"),
    ("Zürich", "Switzerland", 47.3769, 8.5417, "Europe/Zurich"),
    ("Tokyo", "Japan", 35.6762, 139.6503, "Asia/Tokyo"),
    ("Nairobi", "Kenya", -1.2921, 36.8219, "Africa/Nairobi"),
    ("Reykjavík", "Iceland", 64.1466, -21.9426, "Atlantic/Reykjavik"),
    ("Buenos Aires", "Argentina", -34.6037, -58.3816, "America/Argentina/Buenos_Aires"),
    ("Toronto", "Canada", 43.6532, -79.3832, "America/Toronto"),
    ("Mumbai", "India", 19.076, 72.8777, "Asia/Kolkata"),
    ("Cape Town", "South Africa", -33.9249, 18.4241, "Africa/Johannesburg"),
    ("Honolulu", "United States", 21.3069, -157.8583, "Pacific/Honolulu"),
]
AIRPORTS = ["CDG", "SYD", "GRU", "ZRH", "HND", "NBO", "KEF", "EZE", "YYZ", "BOM", "CPT", "HNL", "JFK", "LHR"]
STOCKS = [("AAPL", "NASDAQ"), ("MSFT", "NASDAQ"), ("IBM", "NYSE"), ("KO", "NYSE"), ("HSBA", "LSE"),
          ("7203", "TSE"), ("NVDA", "NASDAQ"), ("BP", "LSE")]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "BRL", "INR", "ZAR", "AUD", "CAD"]
NAMES = ["ana@example.com", "li.wei@example.org", "omar@example.net", "grace@example.com", "yuki@example.jp"]
INGREDIENTS = ["chickpeas", "spinach", "tofu", "salmon", "quinoa", "lentils", "mushrooms", "eggs", "rice"]
TEAMS = {"premier_league": ["Arsenal", "Liverpool", "Brighton"], "nba": ["Celtics", "Lakers", "Nuggets"],
         "la_liga": ["Sevilla", "Valencia", "Girona"]}
PRODUCTS = ["running shoes", "noise cancelling headphones", "espresso machine", "trail backpack", "e-reader"]
BRANDS = ["acme", "northwind", "contoso", "globex", "initech"]


def S(desc, **extra):
    return {"type": "string", "description": desc, **extra}


def N(desc, kind="number", **extra):
    return {"type": kind, "description": desc, **extra}


def tool(name, description, properties, required):
    return {"name": name, "description": description,
            "parameters": {"type": "dict", "properties": properties, "required": required}}


TOOLS = {
    "get_current_weather": tool(
        "get_current_weather", "Get the current weather conditions for a city.",
        {"location": S("City name, optionally with country, e.g. 'Paris, France'."),
         "unit": S("Temperature unit.", enum=["celsius", "fahrenheit"])},
        ["location"]),
    "get_forecast": tool(
        "get_forecast", "Daily weather forecast for a coordinate.",
        {"latitude": N("Latitude in degrees, negative south of the equator.", "float"),
         "longitude": N("Longitude in degrees, negative west of Greenwich.", "float"),
         "days": N("Number of days, 1 to 10.", "integer"),
         "include": {"type": "array", "description": "Extra blocks to include.",
                     "items": {"type": "string", "enum": ["hourly", "alerts", "uv_index", "pollen"]}}},
        ["latitude", "longitude"]),
    "get_stock_price": tool(
        "get_stock_price", "Latest traded price of a stock.",
        {"symbol": S("Ticker symbol, e.g. AAPL."),
         "exchange": S("Exchange the ticker is listed on.", enum=["NASDAQ", "NYSE", "LSE", "TSE"])},
        ["symbol"]),
    "Currency Converter API": tool(
        "Currency Converter API", "Convert an amount between two currencies at today's rate.",
        {"amount": N("Amount to convert."), "from_currency": S("ISO 4217 code of the source currency."),
         "to_currency": S("ISO 4217 code of the target currency.")},
        ["amount", "from_currency", "to_currency"]),
    "compute_loan_payment": tool(
        "compute_loan_payment", "Monthly payment of a fixed-rate loan.",
        {"principal": N("Amount borrowed."), "annual_rate": N("Annual interest rate in percent."),
         "years": N("Term in years.", "integer"),
         "extra_monthly_payment": N("Optional extra paid each month; null for none.")},
        ["principal", "annual_rate", "years"]),
    "rebalance_portfolio": tool(
        "rebalance_portfolio", "Suggest trades that bring a portfolio back to its target weights.",
        {"holdings": {"type": "array", "description": "Current positions.",
                      "items": {"type": "object", "properties": {
                          "symbol": S("Ticker."), "weight": N("Current weight, 0 to 1.")}}},
         "target": {"type": "object", "description": "Target allocation policy.",
                    "properties": {"risk": S("Risk profile.", enum=["conservative", "balanced", "aggressive"]),
                                   "threshold": N("Drift that triggers a trade, 0 to 1.")}}},
        ["holdings", "target"]),
    "search_flights": tool(
        "search_flights", "Search one-way flights.",
        {"origin": S("IATA code of the departure airport."), "destination": S("IATA code of the arrival airport."),
         "date": S("Departure date, YYYY-MM-DD."),
         "passengers": {"type": "object", "description": "Travellers by age group.",
                        "properties": {"adults": N("Adults.", "integer"), "children": N("Children.", "integer")}},
         "cabin": S("Cabin class.", enum=["economy", "premium_economy", "business", "first"]),
         "nonstop_only": {"type": "boolean", "description": "Only direct flights."}},
        ["origin", "destination", "date"]),
    "book_hotel": tool(
        "book_hotel", "Book a hotel room.",
        {"city": S("City."), "check_in": S("YYYY-MM-DD."), "check_out": S("YYYY-MM-DD."),
         "guests": N("Number of guests.", "integer"),
         "amenities": {"type": "array", "items": {"type": "string"}, "description": "Required amenities."}},
        ["city", "check_in", "check_out"]),
    "get_timezone": tool(
        "get_timezone", "IANA time zone and current UTC offset of a city.",
        {"city": S("City name.")}, ["city"]),
    "solve_quadratic": tool(
        "solve_quadratic", "Real roots of a*x^2 + b*x + c = 0.",
        {"a": N("Coefficient a (non-zero)."), "b": N("Coefficient b."), "c": N("Coefficient c.")},
        ["a", "b", "c"]),
    "calculate_statistics": tool(
        "calculate_statistics", "Descriptive statistics of a list of numbers.",
        {"values": {"type": "array", "items": {"type": "number"}, "description": "The numbers."},
         "measures": {"type": "array", "description": "Which statistics to return.",
                      "items": {"type": "string", "enum": ["mean", "median", "stdev", "min", "max"]}}},
        ["values"]),
    "math.factorial": tool(
        "math.factorial", "Factorial of a non-negative integer.",
        {"n": N("The integer.", "integer")}, ["n"]),
    "convert_units": tool(
        "convert_units", "Convert a physical quantity between units.",
        {"value": N("Quantity."), "from_unit": S("Source unit, e.g. km."), "to_unit": S("Target unit, e.g. mi.")},
        ["value", "from_unit", "to_unit"]),
    "create_calendar_event": tool(
        "create_calendar_event", "Create an event in the user's calendar.",
        {"title": S("Event title."), "start": S("Start time, ISO 8601."),
         "duration_minutes": N("Length in minutes.", "integer"),
         "attendees": {"type": "array", "items": {"type": "string"}, "description": "E-mail addresses."},
         "reminder": {"type": "object", "description": "Reminder settings.",
                      "properties": {"minutes_before": N("Minutes before start.", "integer"),
                                     "method": S("How to remind.", enum=["popup", "email", "sms"])}},
         "location": S("Where; null for an online meeting.")},
        ["title", "start"]),
    "send_email": tool(
        "send_email", "Send an e-mail.",
        {"to": {"type": "array", "items": {"type": "string"}, "description": "Recipients."},
         "subject": S("Subject line."), "body": S("Plain-text body."),
         "cc": {"type": "array", "items": {"type": "string"}, "description": "Copy recipients."}},
        ["to", "subject", "body"]),
    "search_products": tool(
        "search_products", "Search the shop catalogue.",
        {"query": S("Free-text query."),
         "filters": {"type": "object", "description": "Optional filters.",
                     "properties": {"min_price": N("Lowest price."), "max_price": N("Highest price."),
                                    "brands": {"type": "array", "items": {"type": "string"}},
                                    "in_stock": {"type": "boolean"}}},
         "sort_by": S("Ordering.", enum=["relevance", "price_asc", "price_desc", "rating"]),
         "limit": N("Maximum results.", "integer")},
        ["query"]),
    "track_package": tool(
        "track_package", "Current status of a parcel.",
        {"tracking_number": S("Carrier tracking number."),
         "carrier": S("Carrier.", enum=["ups", "fedex", "dhl", "usps"])},
        ["tracking_number", "carrier"]),
    "get_match_results": tool(
        "get_match_results", "Recent results of a team.",
        {"league": S("League.", enum=list(TEAMS)), "team": S("Team name."),
         "last_n": N("How many recent matches.", "integer")},
        ["league", "team"]),
    "calculate_bmi": tool(
        "calculate_bmi", "Body-mass index from weight and height.",
        {"weight_kg": N("Weight in kilograms.", "float"), "height_cm": N("Height in centimetres.", "float")},
        ["weight_kg", "height_cm"]),
    "find_recipes": tool(
        "find_recipes", "Find recipes using some ingredients.",
        {"ingredients": {"type": "array", "items": {"type": "string"}, "description": "Ingredients to use."},
         "diet": S("Dietary restriction.", enum=["none", "vegetarian", "vegan", "gluten_free"]),
         "max_calories": N("Calorie cap per serving.", "integer")},
        ["ingredients"]),
    "translate_text": tool(
        "translate_text", "Translate text into another language.",
        {"text": S("Text to translate."),
         "target_language": S("Target language code.", enum=["en", "fr", "de", "es", "ja", "pt", "zh"]),
         "formal": {"type": "boolean", "description": "Use a formal register."}},
        ["text", "target_language"]),
    "geocode_address": tool(
        "geocode_address", "Coordinates of a place name or address.",
        {"address": S("Address or place name.")}, ["address"]),
    "get_air_quality": tool(
        "get_air_quality", "Air-quality index at a coordinate.",
        {"latitude": N("Latitude in degrees."), "longitude": N("Longitude in degrees.")},
        ["latitude", "longitude"]),
}


def r2(x):
    return round(x, 2)


def date(rng, month_lo=1):
    return f"2025-{rng.randint(month_lo, 12):02d}-{rng.randint(1, 28):02d}"


# Each task: rng -> (user question, [calls], [results], answer). Results are simulated.
def t_weather(rng):
    city, country, *_ = rng.choice(CITIES)
    unit = rng.choice(["celsius", "fahrenheit", None])
    args = {"location": f"{city}, {country}"} | ({"unit": unit} if unit else {})
    temp = rng.randint(-5, 35) if unit != "fahrenheit" else rng.randint(25, 95)
    sym = "°F" if unit == "fahrenheit" else "°C"
    sky = rng.choice(["clear", "light rain", "overcast", "snow showers", "windy"])
    q = rng.choice([f"What's the weather like in {city} right now?",
                    f"Is it cold in {city} today? Give me the temperature" + (f" in {unit}." if unit else "."),
                    f"Current conditions in {city}, {country}, please."])
    return q, [("get_current_weather", args)], [{"temperature": temp, "unit": sym, "conditions": sky}], \
        f"It is currently {temp}{sym} with {sky} in {city}."


def t_forecast(rng):
    city, _, lat, lon, _ = rng.choice(CITIES)
    days = rng.randint(2, 7)
    include = rng.sample(["hourly", "alerts", "uv_index", "pollen"], rng.randint(1, 2))
    highs = [rng.randint(-3, 33) for _ in range(days)]
    q = f"Forecast for the next {days} days at latitude {lat}, longitude {lon} ({city}); include {' and '.join(include)}."
    return q, [("get_forecast", {"latitude": lat, "longitude": lon, "days": days, "include": include})], \
        [{"daily_high_c": highs, "alerts": []}], \
        f"Daily highs for {city} over the next {days} days: " + ", ".join(f"{h}°C" for h in highs) + "."


def t_stock(rng):
    sym, exch = rng.choice(STOCKS)
    price = r2(rng.uniform(20, 900))
    args = {"symbol": sym} | ({"exchange": exch} if rng.random() < 0.6 else {})
    return rng.choice([f"How much is {sym} trading at?", f"Latest price of {sym} on the {exch}?"]), \
        [("get_stock_price", args)], [{"symbol": sym, "price": price, "currency": "USD"}], \
        f"{sym} last traded at {price} USD."


def t_currency(rng):
    a, b = rng.sample(CURRENCIES, 2)
    amount = rng.choice([50, 120.5, 1000, 2500, 99.99])
    rate = r2(rng.uniform(0.1, 150))
    return f"Convert {amount} {a} to {b}.", \
        [("Currency Converter API", {"amount": amount, "from_currency": a, "to_currency": b})], \
        [{"converted": r2(amount * rate), "rate": rate}], f"{amount} {a} is about {r2(amount * rate)} {b}."


def t_loan(rng):
    p, rate, years = rng.choice([150000, 240000, 18000, 32000]), rng.choice([3.5, 4.25, 6.9, 7.1]), rng.choice([5, 15, 30])
    extra = rng.choice([None, 100, 250])
    args = {"principal": p, "annual_rate": rate, "years": years, "extra_monthly_payment": extra}
    pay = r2(p * (rate / 1200) / (1 - (1 + rate / 1200) ** (-12 * years)))
    q = f"What's the monthly payment on a {p} loan at {rate}% over {years} years" + \
        (f", paying {extra} extra each month?" if extra else " with no extra payments?")
    return q, [("compute_loan_payment", args)], [{"monthly_payment": pay}], f"The monthly payment is {pay}."


def t_rebalance(rng):
    syms = rng.sample([s for s, _ in STOCKS], 3)
    w = [rng.randint(1, 8) for _ in syms]
    holdings = [{"symbol": s, "weight": r2(x / sum(w))} for s, x in zip(syms, w)]
    risk = rng.choice(["conservative", "balanced", "aggressive"])
    thr = rng.choice([0.05, 0.1])
    q = "My portfolio is " + ", ".join(f"{h['symbol']} {int(h['weight'] * 100)}%" for h in holdings) + \
        f". Rebalance it for a {risk} profile with a {int(thr * 100)}% drift threshold."
    return q, [("rebalance_portfolio", {"holdings": holdings, "target": {"risk": risk, "threshold": thr}})], \
        [{"trades": [{"symbol": syms[0], "action": "sell", "weight": 0.05}]}], \
        f"Sell about 5% of {syms[0]} to get back to a {risk} allocation; the rest is within the threshold."


def t_flight(rng):
    o, d = rng.sample(AIRPORTS, 2)
    day = date(rng)
    args = {"origin": o, "destination": d, "date": day}
    if rng.random() < 0.6:
        args["passengers"] = {"adults": rng.randint(1, 3), "children": rng.randint(0, 2)}
    if rng.random() < 0.5:
        args["cabin"] = rng.choice(["economy", "premium_economy", "business", "first"])
    if rng.random() < 0.5:
        args["nonstop_only"] = rng.random() < 0.5
    who = ""
    if "passengers" in args:
        who = f" for {args['passengers']['adults']} adults and {args['passengers']['children']} children"
    q = f"Find flights from {o} to {d} on {day}{who}" + (f" in {args['cabin'].replace('_', ' ')}" if "cabin" in args else "") + \
        (" (direct only)" if args.get("nonstop_only") else "") + "."
    price = rng.randint(90, 2400)
    return q, [("search_flights", args)], [{"flights": [{"flight": f"XY{rng.randint(100, 999)}", "price": price}]}], \
        f"The cheapest option from {o} to {d} on {day} costs {price} USD."


def t_hotel(rng):
    city = rng.choice(CITIES)[0]
    day = rng.randint(1, 20)
    args = {"city": city, "check_in": f"2025-07-{day:02d}", "check_out": f"2025-07-{day + rng.randint(1, 6):02d}",
            "guests": rng.randint(1, 4), "amenities": rng.sample(["wifi", "pool", "parking", "gym", "breakfast"], 2)}
    q = f"Book a hotel in {city} from {args['check_in']} to {args['check_out']} for {args['guests']} guests; " \
        f"we need {args['amenities'][0]} and {args['amenities'][1]}."
    ref = f"HB{rng.randint(10000, 99999)}"
    return q, [("book_hotel", args)], [{"status": "confirmed", "reference": ref}], \
        f"Your room in {city} is booked; the confirmation number is {ref}."


def t_timezone(rng):
    city, _, _, _, tz = rng.choice(CITIES)
    return f"What time zone is {city} in?", [("get_timezone", {"city": city})], [{"timezone": tz}], \
        f"{city} uses the {tz} time zone."


def t_quadratic(rng):
    a = rng.choice([1, 2, -1, 3])
    r1, r2_ = rng.randint(-6, 6), rng.randint(-6, 6)
    b, c = -a * (r1 + r2_), a * r1 * r2_
    return f"Solve {a}x^2 + ({b})x + ({c}) = 0.", [("solve_quadratic", {"a": a, "b": b, "c": c})], \
        [{"roots": sorted({r1, r2_})}], f"The roots are {', '.join(map(str, sorted({r1, r2_})))}."


def t_stats(rng):
    values = [r2(rng.uniform(-50, 100)) for _ in range(rng.randint(4, 8))]
    measures = rng.sample(["mean", "median", "stdev", "min", "max"], rng.randint(1, 3))
    mean = r2(sum(values) / len(values))
    return f"Give me the {', '.join(measures)} of {values}.", \
        [("calculate_statistics", {"values": values, "measures": measures})], \
        [{"mean": mean, "min": min(values), "max": max(values)}], f"The mean is {mean}; min {min(values)}, max {max(values)}."


def t_factorial(rng):
    n = rng.randint(3, 15)
    f = 1
    for k in range(2, n + 1):
        f *= k
    return f"What is {n} factorial?", [("math.factorial", {"n": n})], [{"result": f}], f"{n}! = {f}."


def t_units(rng):
    value, fu, tu, k = rng.choice([(42.195, "km", "mi", 0.621371), (180, "lb", "kg", 0.453592),
                                   (-40, "F", "C", None), (3.5, "l", "gal", 0.264172)])
    out = -40 if k is None else r2(value * k)
    return f"Convert {value} {fu} to {tu}.", [("convert_units", {"value": value, "from_unit": fu, "to_unit": tu})], \
        [{"value": out, "unit": tu}], f"{value} {fu} is {out} {tu}."


def t_event(rng):
    title = rng.choice(["Budget review", "Design sync", "Dentist", "1:1 with Sam", "Quarterly planning"])
    start = f"{date(rng)}T{rng.randint(8, 17):02d}:{rng.choice(['00', '30'])}:00"
    args = {"title": title, "start": start, "duration_minutes": rng.choice([15, 30, 45, 60, 90])}
    if rng.random() < 0.7:
        args["attendees"] = rng.sample(NAMES, rng.randint(1, 3))
    if rng.random() < 0.6:
        args["reminder"] = {"minutes_before": rng.choice([5, 10, 30]), "method": rng.choice(["popup", "email", "sms"])}
    online = rng.random() < 0.5
    args["location"] = None if online else rng.choice(["Room 4.12", "HQ atrium", "Café Central"])
    q = f"Schedule '{title}' at {start} for {args['duration_minutes']} minutes" + \
        (f" with {', '.join(args['attendees'])}" if "attendees" in args else "") + \
        (" as an online meeting" if online else f" in {args['location']}") + \
        (f", remind me {args['reminder']['minutes_before']} minutes before by {args['reminder']['method']}" if "reminder" in args else "") + "."
    return q, [("create_calendar_event", args)], [{"event_id": f"ev_{rng.randint(1000, 9999)}", "created": True}], \
        f"'{title}' is on your calendar."


def t_email(rng):
    to = rng.sample(NAMES, rng.randint(1, 2))
    subject = rng.choice(["Invoice 2291", "Trip itinerary", "Lunch on Friday?", "Draft report"])
    args = {"to": to, "subject": subject, "body": rng.choice(["Please see the attached file.", "Are you free at noon?",
                                                              "Here is the draft for your review."])}
    if rng.random() < 0.4:
        args["cc"] = [rng.choice(NAMES)]
    return f"Email {' and '.join(to)} with the subject '{subject}' saying: {args['body']}" + \
        (f" Copy {args['cc'][0]}." if "cc" in args else ""), [("send_email", args)], [{"sent": True}], "The e-mail has been sent."


def t_products(rng):
    query = rng.choice(PRODUCTS)
    args = {"query": query}
    filters = {}
    if rng.random() < 0.7:
        filters["max_price"] = rng.choice([50, 120, 300])
    if rng.random() < 0.4:
        filters["min_price"] = 10
    if rng.random() < 0.5:
        filters["brands"] = rng.sample(BRANDS, 2)
    if rng.random() < 0.5:
        filters["in_stock"] = True
    if filters:
        args["filters"] = filters
    if rng.random() < 0.6:
        args["sort_by"] = rng.choice(["relevance", "price_asc", "price_desc", "rating"])
    if rng.random() < 0.4:
        args["limit"] = rng.choice([3, 5, 10])
    desc = query + (f" under {filters['max_price']}" if "max_price" in filters else "") + \
        (f" from {' or '.join(filters['brands'])}" if "brands" in filters else "") + \
        (", in stock only" if filters.get("in_stock") else "") + \
        (f", sorted by {args['sort_by'].replace('_', ' ')}" if "sort_by" in args else "")
    price = rng.randint(20, 290)
    return f"Find {desc}.", [("search_products", args)], [{"items": [{"name": f"{query} X{price}", "price": price}]}], \
        f"Top result: {query} X{price} at {price}."


def t_package(rng):
    carrier = rng.choice(["ups", "fedex", "dhl", "usps"])
    num = f"{rng.randint(10 ** 9, 10 ** 10 - 1)}"
    status = rng.choice(["in transit", "out for delivery", "delivered"])
    return f"Where is my {carrier.upper()} package {num}?", \
        [("track_package", {"tracking_number": num, "carrier": carrier})], [{"status": status}], f"Your package is {status}."


def t_match(rng):
    league = rng.choice(list(TEAMS))
    team = rng.choice(TEAMS[league])
    args = {"league": league, "team": team} | ({"last_n": rng.randint(2, 5)} if rng.random() < 0.5 else {})
    score = f"{rng.randint(0, 4)}-{rng.randint(0, 4)}" if league != "nba" else f"{rng.randint(90, 130)}-{rng.randint(90, 130)}"
    return f"How did {team} do recently?", [("get_match_results", args)], [{"last_result": score}], \
        f"{team}'s latest result was {score}."


def t_bmi(rng):
    w, h = r2(rng.uniform(48, 110)), r2(rng.uniform(150, 200))
    bmi = r2(w / (h / 100) ** 2)
    return f"I weigh {w} kg and I'm {h} cm tall. What's my BMI?", \
        [("calculate_bmi", {"weight_kg": w, "height_cm": h})], [{"bmi": bmi}], f"Your BMI is {bmi}."


def t_recipes(rng):
    ing = rng.sample(INGREDIENTS, rng.randint(2, 3))
    diet = rng.choice(["none", "vegetarian", "vegan", "gluten_free"])
    args = {"ingredients": ing, "diet": diet} | ({"max_calories": rng.choice([400, 600])} if rng.random() < 0.5 else {})
    return f"Any {diet.replace('_', '-')} recipes with {', '.join(ing)}?" if diet != "none" else \
        f"What can I cook with {', '.join(ing)}?", [("find_recipes", args)], \
        [{"recipes": [f"{ing[0].title()} bowl", f"Roasted {ing[1]}"]}], \
        f"Try a {ing[0]} bowl or roasted {ing[1]}."


def t_translate(rng):
    text, lang, out = rng.choice([("Where is the train station?", "de", "Wo ist der Bahnhof?"),
                                  ("Thank you very much", "ja", "どうもありがとうございます"),
                                  ("The meeting is postponed.", "fr", "La réunion est reportée."),
                                  ("Good morning", "pt", "Bom dia"), ("See you tomorrow", "zh", "明天见")])
    args = {"text": text, "target_language": lang} | ({"formal": rng.random() < 0.5} if rng.random() < 0.5 else {})
    return f"Translate '{text}' into {lang}.", [("translate_text", args)], [{"translation": out}], out


def t_geocode(rng):
    city, country, lat, lon, _ = rng.choice(CITIES)
    return f"What are the coordinates of {city}, {country}?", [("geocode_address", {"address": f"{city}, {country}"})], \
        [{"latitude": lat, "longitude": lon}], f"{city} is at {lat}, {lon}."


TASKS = [t_weather, t_forecast, t_stock, t_currency, t_loan, t_rebalance, t_flight, t_hotel, t_timezone,
         t_quadratic, t_stats, t_factorial, t_units, t_event, t_email, t_products, t_package, t_match,
         t_bmi, t_recipes, t_translate, t_geocode]

# Questions no tool in the catalogue can answer, and requests missing a required argument.
IRRELEVANT = [
    "Write a haiku about autumn leaves.", "Who painted the ceiling of the Sistine Chapel?",
    "Explain the difference between a list and a tuple in Python.", "What is the capital of Mongolia?",
    "Can you recommend a good science-fiction novel?", "Why is the sky blue?",
    "Summarize the plot of Hamlet in two sentences.", "How many bones are in the human body?",
]
MISSING = [  # (question, tool, missing parameter)
    ("Book me a hotel for next weekend.", "book_hotel", "city"),
    ("Convert 300 dollars, please.", "Currency Converter API", "to_currency"),
    ("Track my package with tracking number 1Z999.", "track_package", "carrier"),
    ("Find me flights to Tokyo.", "search_flights", "origin"),
    ("What's my BMI? I'm 180 cm tall.", "calculate_bmi", "weight_kg"),
]


def system_prompt(tool_names, rng):
    """ToolACE-style system prompt with the relevant tools plus 1-3 distractors, shuffled."""
    names = list(dict.fromkeys(tool_names))
    others = [n for n in TOOLS if n not in names]
    names += rng.sample(others, rng.randint(1, 3))
    rng.shuffle(names)
    return SYSTEM_HEAD + json.dumps([TOOLS[n] for n in names], ensure_ascii=False) + SYSTEM_TAIL


def call_turn(calls):
    return {"from": "assistant", "value": format_pythonic_calls([{"name": n, "arguments": a} for n, a in calls])}


def result_turn(calls, results):
    return {"from": "tool", "value": json.dumps([{"name": n, "results": r} for (n, _), r in zip(calls, results)],
                                                ensure_ascii=False)}


def make_row(rng) -> dict:
    kind = rng.choices(["call", "call_answer", "parallel", "multi_turn", "irrelevant", "missing"],
                       weights=[25, 30, 20, 10, 8, 7])[0]
    if kind == "irrelevant":
        q = rng.choice(IRRELEVANT)
        convo = [{"from": "user", "value": q},
                 {"from": "assistant", "value": rng.choice([
                     "None of the available functions can answer this question.",
                     "I can't help with that using the provided functions; none of them apply.",
                     "The given functions do not cover this request."])}]
        return {"system": system_prompt(rng.sample(list(TOOLS), 2), rng), "conversations": convo}
    if kind == "missing":
        q, name, param = rng.choice(MISSING)
        convo = [{"from": "user", "value": q},
                 {"from": "assistant", "value": f"The request lacks the required parameter '{param}' for {name}. "
                                                f"Could you provide it?"}]
        return {"system": system_prompt([name], rng), "conversations": convo}

    if kind == "parallel":
        # two or three independent questions answered by calls in one turn (same tool or different)
        tasks = [rng.choice(TASKS)] * 2 if rng.random() < 0.4 else rng.sample(TASKS, rng.randint(2, 3))
        parts = [t(rng) for t in tasks]
        calls = [c for p in parts for c in p[1]]
        results = [r for p in parts for r in p[2]]
        convo = [{"from": "user", "value": " Also, ".join(p[0] for p in parts)}, call_turn(calls)]
        if rng.random() < 0.6:
            convo += [result_turn(calls, results), {"from": "assistant", "value": " ".join(p[3] for p in parts)}]
        return {"system": system_prompt([n for n, _ in calls], rng), "conversations": convo}

    q, calls, results, answer = rng.choice(TASKS)(rng)
    convo = [{"from": "user", "value": q}, call_turn(calls)]
    names = [n for n, _ in calls]
    if kind in ("call_answer", "multi_turn"):
        convo += [result_turn(calls, results), {"from": "assistant", "value": answer}]
    if kind == "multi_turn":
        q2, calls2, results2, answer2 = rng.choice(TASKS)(rng)
        convo += [{"from": "user", "value": "Thanks! " + q2}, call_turn(calls2), result_turn(calls2, results2),
                  {"from": "assistant", "value": answer2}]
        names += [n for n, _ in calls2]
    return {"system": system_prompt(names, rng), "conversations": convo}


# --------------------------------------------------------------------------- real-row shapes

EDGE_TOOLS = {
    "Currency Exchange Rate": {"name": "Currency Exchange Rate", "description": "Convert an amount between currencies.",
                               "parameters": {"type": "dict", "properties": {
                                   "from": S("ISO code of the source currency."), "to": S("ISO code of the target."),
                                   "amount": N("Amount.", "float")}, "required": None}},
    "list_orders": {"name": "list_orders", "description": "List the customer's orders (OData-style paging).",
                    "parameters": {"type": "dict", "properties": {
                        "sort-by": S("Field to sort on.", enum=["date", "total"]),
                        "postal-unit": S("Postal unit the orders ship to."),
                        "$top": {"type": ["int", "null"], "description": "Page size; null for the default."}},
                        "required": None}},
    "Stock/Quote (v2)": {"name": "Stock/Quote (v2)", "description": "Delayed quote of a ticker.",
                         "parameters": {"type": "dict", "properties": {"symbol": S("Ticker.")}, "required": None}},
    "ping_service": {"name": "ping_service", "description": "Check that the booking service is up.",
                     "parameters": {"type": "dict", "properties": {}, "required": None}},
    "set_preferences": {"name": "set_preferences", "description": "Update app settings.",
                        "parameters": {"type": "dict", "properties": {"settings": {
                            "type": "dict", "description": "Settings to change."}}, "required": None}},
}
ZH_HEAD = ("你是一个组合函数的专家。你会得到一个问题和一组可能的函数。根据问题，你需要进行一个或多个函数/工具调用以实现目的。\n"
           "如果没有函数可以使用，请指出。如果给定的问题缺少函数所需的参数，也请指出。\n"
           "以下是可以调用的工具的JSON格式列表:\n")
ZH_TAIL = ("\n如果您决定返回函数调用，请将其格式化为[func1(params_name=params_value, params_name2=params_value2...), "
           "func2(params)]\n\n不得包含其他文本。\n")


def edge_system(names, rng, head=SYSTEM_HEAD, tail=SYSTEM_TAIL):
    tools = [EDGE_TOOLS.get(n) or TOOLS[n] for n in names] + [TOOLS[n] for n in rng.sample(list(TOOLS), 1)]
    return head + json.dumps(tools, ensure_ascii=False) + tail


def turns(*pairs):
    return [{"from": r, "value": v} for r, v in pairs]


def e_keywords(rng):
    a, b = rng.sample(CURRENCIES, 2)
    amount = rng.choice([250.0, 80.5, 1200.0])
    return {"system": edge_system(["Currency Exchange Rate"], rng), "conversations": turns(
        ("user", f"How much is {amount} {a} in {b}?"),
        ("assistant", f'[Currency Exchange Rate(from="{a}", to="{b}", amount={amount})]'),
        ("tool", json.dumps([{"name": "Currency Exchange Rate", "results": {"converted": r2(amount * 1.1)}}])),
        ("assistant", f"{amount} {a} is about {r2(amount * 1.1)} {b}."))}


def e_hyphens(rng):
    top, unit = rng.choice([5, 10, 20]), rng.choice(["SW1A", "75008", "2000"])
    return {"system": edge_system(["list_orders"], rng), "conversations": turns(
        ("user", f"Show my last {top} orders to postal unit {unit}, newest first."),
        ("assistant", f'[list_orders(sort-by="date", postal-unit="{unit}", $top={top})]'))}


def e_chinese(rng):
    city, country, *_ = rng.choice(CITIES)
    return {"system": edge_system(["get_current_weather"], rng, ZH_HEAD, ZH_TAIL), "conversations": turns(
        ("user", f"{city}现在天气怎么样？"),
        ("assistant", f'[get_current_weather(location="{city}, {country}", unit="celsius")]'),
        ("tool", json.dumps([{"name": "get_current_weather", "results": {"temperature": 18}}])),
        ("assistant", f"{city}现在是18°C。"))}


def e_prose_then_calls(rng):
    city, country, *_ = rng.choice(CITIES)
    return {"system": edge_system(["get_timezone", "get_current_weather"], rng), "conversations": turns(
        ("user", f"Time zone and weather in {city}?"),
        ("assistant", f'Let me look both up.\n\n[get_timezone(city="{city}"), '
                      f'get_current_weather(location="{city}, {country}")]'))}


def e_name_in_string(rng):
    to = rng.choice(NAMES)
    return {"system": edge_system(["send_email", "Currency Converter API"], rng), "conversations": turns(
        ("user", f"Email {to} that the rates come from the converter."),
        ("assistant", f'[send_email(to=["{to}"], subject="Rates", '
                      f'body="Computed with [Currency Converter API(amount=1)] at noon.")]'))}


def e_punctuation_twice(rng):
    a, b = rng.sample([s for s, _ in STOCKS], 2)
    return {"system": edge_system(["Stock/Quote (v2)"], rng), "conversations": turns(
        ("user", f"Quotes for {a} and {b}."),
        ("assistant", f'[Stock/Quote (v2)(symbol="{a}"), Stock/Quote (v2)(symbol="{b}")]'))}


def e_no_arguments(rng):
    return {"system": edge_system(["ping_service"], rng), "conversations": turns(
        ("user", rng.choice(["Is the booking service up?", "Check the booking service."])),
        ("assistant", "[ping_service()]"), ("tool", '[{"name": "ping_service", "results": {"up": true}}]'),
        ("assistant", "The booking service is up."))}


def e_json_booleans(rng):
    lang = rng.choice(["fr", "de", "ja"])
    return {"system": edge_system(["set_preferences"], rng), "conversations": turns(
        ("user", f"Turn on dark mode, turn off beta features, language {lang}."),
        ("assistant", f'[set_preferences(settings={{"dark_mode": true, "beta": false, "language": "{lang}"}})]'))}


def e_unicode_escapes(rng):
    return {"system": edge_system(["translate_text"], rng), "conversations": turns(
        ("user", "Translate 'Caf\u00e9 au lait' into German."),
        ("assistant", '[translate_text(text="Caf\\u00e9 au lait", target_language="de")]'),
        ("tool", '[{"name": "translate_text", "results": {"translation": "Milchkaff\\u00e9e"}}]'),
        ("assistant", "Milchkaffee."))}


def e_dialog_wrapper(rng):
    city = rng.choice(CITIES)[0]
    wrapped = (f"Role definition: You are a travel assistant.\nHistorical dialog data is as follows:\n"
               f"user: I'm flying to {city}.\nassistant: Great, anything I can check?\n"
               f"Current user question: what time zone is it in?")
    return {"system": edge_system(["get_timezone"], rng), "conversations": turns(
        ("user", wrapped), ("assistant", f'[get_timezone(city="{city}")]'))}


def e_text_only(rng):
    q = rng.choice(IRRELEVANT)
    convo = turns(("user", q), ("assistant", "Here is a short answer without any tools."))
    return {"system": "You are a helpful assistant.", "conversations": convo} if rng.random() < 0.5 else \
        {"conversations": convo}


EDGES = [e_keywords, e_hyphens, e_chinese, e_prose_then_calls, e_name_in_string, e_punctuation_twice,
         e_no_arguments, e_json_booleans, e_unicode_escapes, e_dialog_wrapper, e_text_only]


def make_rows(n: int = 200, seed: int = 0, edge_repeats: int = 2) -> list[dict]:
    """n generated rows, then each real-row shape ``edge_repeats`` times at seeded positions (the
    first n rows are the same as without them)."""
    rng = random.Random(seed)
    rows = [make_row(rng) for _ in range(n)]
    for build in EDGES * edge_repeats:
        rows.insert(rng.randint(0, len(rows)), build(rng))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--edge-repeats", type=int, default=2, help="copies of each real-row shape")
    ap.add_argument("--out", default=str(ROOT / "data" / "toolace_sample.jsonl"))
    args = ap.parse_args(argv)
    rows = make_rows(args.rows, args.seed, args.edge_repeats)
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
