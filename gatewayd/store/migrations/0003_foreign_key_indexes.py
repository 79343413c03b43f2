from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('gatewayd', '0002_ticket_reply_address_index')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Attachment',
            index=Index(fields=['message_id']),
        ),
        ops.AddIndex(
            model_name='ContactAddress',
            index=Index(fields=['contact_id']),
        ),
        ops.AddIndex(
            model_name='InboundReceipt',
            index=Index(fields=['ticket_id']),
        ),
        ops.AddIndex(
            model_name='InboundReceipt',
            index=Index(fields=['ticket_message_id']),
        ),
        ops.AddIndex(
            model_name='Message',
            index=Index(fields=['ticket_id']),
        ),
        ops.AddIndex(
            model_name='Order',
            index=Index(fields=['contact_id']),
        ),
        ops.AddIndex(
            model_name='Outbox',
            index=Index(fields=['ticket_id']),
        ),
        ops.AddIndex(
            model_name='Quarantine',
            index=Index(fields=['ticket_id']),
        ),
        ops.AddIndex(
            model_name='StatusChange',
            index=Index(fields=['ticket_id']),
        ),
        ops.AddIndex(
            model_name='Ticket',
            index=Index(fields=['contact_id']),
        ),
        ops.AddIndex(
            model_name='Ticket',
            index=Index(fields=['order_id']),
        ),
        ops.AddIndex(
            model_name='Ticket',
            index=Index(fields=['parent_id']),
        ),
        ops.AddIndex(
            model_name='TicketEvent',
            index=Index(fields=['ticket_id']),
        ),
    ]
