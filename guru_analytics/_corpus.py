"""The words of the synthetic guru: support topics and title templates, follow-up
questions, user names and off-topic questions (data only; ``synthetic`` draws from it)."""

from __future__ import annotations

# topic -> (title templates, subjects). Titles are every template x subject.
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "install": (
        (
            "How do I install {s}?",
            "Installing {s} fails with a permission error",
            "What are the system requirements for {s}?",
            "Can I install {s} without Docker?",
        ),
        (
            "the CLI",
            "the Python SDK",
            "the self-hosted server",
            "the VS Code extension",
            "the widget",
        ),
    ),
    "auth": (
        (
            "How do I rotate the API key for {s}?",
            "Why does {s} return 401 Invalid API key?",
            "How do I set up SSO with {s}?",
        ),
        ("Okta", "Google Workspace", "GitHub OAuth", "Azure AD", "the REST API"),
    ),
    "api": (
        (
            "What is the rate limit of {s}?",
            "How do I paginate {s}?",
            "Why does {s} time out?",
            "Is there a webhook for {s}?",
        ),
        (
            "the sessions endpoint",
            "the answer endpoint",
            "the data sources API",
            "streaming answers",
        ),
    ),
    "deployment": (
        (
            "How do I deploy {s} on Kubernetes?",
            "How do I upgrade {s}?",
            "How do I back up {s}?",
            "Why does {s} run out of memory?",
        ),
        ("Gurubase", "the Postgres database", "the Milvus vector store", "the Nginx proxy"),
    ),
    "billing": (
        (
            "How do I change {s}?",
            "Why was I charged twice for {s}?",
            "Can I get an invoice for {s}?",
        ),
        ("my plan", "extra seats", "the annual subscription", "API overage"),
    ),
    "integrations": (
        (
            "How do I connect {s}?",
            "Why is the {s} bot not answering?",
            "Can the {s} integration answer in threads?",
        ),
        ("Slack", "Discord", "GitHub issues", "Jira", "Zendesk"),
    ),
    "data sources": (
        (
            "How do I index {s}?",
            "Why is {s} not crawled?",
            "How often is {s} re-indexed?",
        ),
        (
            "a sitemap",
            "a PDF manual",
            "a YouTube playlist",
            "a private GitHub repo",
            "Confluence pages",
        ),
    ),
}

FOLLOW_UPS: tuple[str, ...] = (
    "Can you show an example?",
    "What about on Windows?",
    "That did not work, I still get an error",
    "Is there a way to do this from the API?",
    "Thanks! And how do I undo it?",
    "Which version added this?",
    "Does this also apply to the self-hosted edition?",
    "Can you link the docs for that?",
    "Is there a limit on how many I can have?",
    "How long does that take?",
)

FIRST_NAMES = ("maria", "li", "ahmed", "olga", "sam", "priya", "jonas", "ana", "kenji", "fatima")
LAST_NAMES = (
    "garcia",
    "wang",
    "hassan",
    "ivanova",
    "lee",
    "patel",
    "berg",
    "silva",
    "sato",
    "diallo",
)

OFF_TOPIC: tuple[str, ...] = (
    "what is the weather in paris tomorrow",
    "write me a poem about databases",
    "who won the football match yesterday",
    "can you book a flight for me",
    "what is the meaning of life",
    "translate this sentence to klingon",
    "recommend a good pizza place nearby",
)
