from __future__ import annotations

from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    verbose_name = "Conversations"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save, pre_save

        from conversations import selectors
        from conversations.models import KnowledgeEntry, Specialist

        for model in (KnowledgeEntry, Specialist):
            pre_save.connect(selectors.knowledge_moving, sender=model)
            post_save.connect(selectors.knowledge_changed, sender=model)
            post_delete.connect(selectors.knowledge_changed, sender=model)
