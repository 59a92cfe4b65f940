"""Create the demo services, specialists, knowledge base and logins (SPEC §10)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from conversations.demo_data import SERVICES
from conversations.models import KnowledgeEntry, Service, Specialist

DEMO_USERS = [
    # username, first name, last name, superuser
    ("admin", "Ada", "Admin", True),
    ("alice", "Alice", "Agent", False),
    ("bob", "Bob", "Agent", False),
]


class Command(BaseCommand):
    help = "Create demo services, specialists, knowledge and logins; safe to run again."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--password",
            default="handoff-demo",
            help="Password for the demo logins (default: handoff-demo).",
        )

    @transaction.atomic
    def handle(self, *args, password: str, **options) -> None:
        entries = 0
        for data in SERVICES:
            service, _ = Service.objects.update_or_create(
                slug=data["slug"],
                defaults={
                    "name": data["name"],
                    "greeting": data["greeting"],
                    "handoff_wait_seconds": data["handoff_wait_seconds"],
                },
                create_defaults={
                    "name": data["name"],
                    "mode": data["mode"],
                    "greeting": data["greeting"],
                    "handoff_wait_seconds": data["handoff_wait_seconds"],
                },
            )
            for position, spec in enumerate(data["specialists"]):
                specialist, _ = Specialist.objects.update_or_create(
                    service=service,
                    name=spec["name"],
                    defaults={
                        "description": spec["description"],
                        "instructions": spec["instructions"],
                        "position": position,
                    },
                )
                for entry in spec["entries"]:
                    KnowledgeEntry.objects.update_or_create(
                        service=service,
                        question=entry["question"],
                        defaults={"specialist": specialist, "answer": entry["answer"]},
                    )
                    entries += 1
        agents, _ = Group.objects.get_or_create(name="Agents")
        User = get_user_model()
        for username, first, last, superuser in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={
                    "first_name": first,
                    "last_name": last,
                    "email": f"{username}@example.com",
                },
            )
            if created:
                user.set_password(password)
            user.is_staff = superuser  # agents work in the console, admins in /admin/
            user.is_superuser = superuser
            user.save()
            user.groups.add(agents)

        self.stdout.write(
            self.style.SUCCESS(
                f"Demo ready: {len(SERVICES)} services, {entries} knowledge entries."
            )
        )
        self.stdout.write("Logins (created with the password below on first run):")
        for username, first, _, superuser in DEMO_USERS:
            role = "admin" if superuser else "agent"
            self.stdout.write(f"  {username:<6} / {password}   ({role}, {first})")
        for data in SERVICES:
            self.stdout.write(f"  widget demo: /widget/demo/{data['slug']}/")
        if not settings.DEBUG:
            self.stdout.write(
                self.style.WARNING("These are demo logins: change the passwords in production.")
            )
