from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('gatewayd', '0001_initial')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Outbox',
            name='internal',
            field=fields.BooleanField(default=False, db_default=False),
        ),
    ]
