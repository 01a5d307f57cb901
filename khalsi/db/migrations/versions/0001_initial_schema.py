"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 20:59:13.817062
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "coins",
        sa.Column("coin_id", sa.String(length=100), nullable=False),
        sa.Column("symbol", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("coin_id", name=op.f("pk_coins")),
    )
    with op.batch_alter_table("coins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_coins_symbol"), ["symbol"], unique=False)

    op.create_table(
        "fear_greed",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("classification", sa.String(length=30), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingestion_run_id", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_fear_greed")),
    )
    op.create_table(
        "ingestion_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("flow", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("dataset", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Double(), nullable=True),
        sa.Column("rows_in", sa.Integer(), nullable=False),
        sa.Column("rows_stored", sa.Integer(), nullable=False),
        sa.Column("rows_rejected", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("raw_path", sa.String(length=500), nullable=True),
        sa.Column("prefect_flow_run_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingestion_runs")),
    )
    with op.batch_alter_table("ingestion_runs", schema=None) as batch_op:
        batch_op.create_index("ix_ingestion_runs_started_at", ["started_at"], unique=False)

    op.create_table(
        "market_data",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("coin_id", sa.String(length=100), nullable=False),
        sa.Column("symbol", sa.String(length=20), nullable=False),
        sa.Column("price", sa.Double(), nullable=False),
        sa.Column("volume_24h", sa.Double(), nullable=True),
        sa.Column("market_cap", sa.Double(), nullable=True),
        sa.Column("price_change_24h", sa.Double(), nullable=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("source", sa.String(length=50), server_default="coingecko", nullable=False),
        sa.Column("ingestion_run_id", sa.Uuid(), nullable=True),
        sa.Column("ingested_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_market_data")),
        sa.UniqueConstraint("coin_id", "timestamp", name=op.f("uq_market_data_coin_id_timestamp")),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("coin_id", sa.String(length=100), nullable=False),
        sa.Column("symbol", sa.String(length=20), nullable=False),
        sa.Column("timeframe", sa.String(length=20), nullable=False),
        sa.Column("probability_up", sa.Numeric(precision=5, scale=4, asdecimal=False), nullable=True),
        sa.Column("probability_down", sa.Numeric(precision=5, scale=4, asdecimal=False), nullable=True),
        sa.Column("confidence_level", sa.Numeric(precision=5, scale=4, asdecimal=False), nullable=True),
        sa.Column("price_target", sa.Double(), nullable=True),
        sa.Column("price_target_low", sa.Double(), nullable=True),
        sa.Column("price_target_high", sa.Double(), nullable=True),
        sa.Column("model_name", sa.String(length=200), nullable=True),
        sa.Column("model_version", sa.String(length=50), nullable=False),
        sa.Column("feature_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "methodology",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "coin_id",
            "timeframe",
            "feature_timestamp",
            "model_version",
            name="uq_predictions_coin_horizon_point_model",
        ),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index("idx_predictions_expires_at", ["expires_at"], unique=False)
        batch_op.create_index("idx_predictions_symbol_timeframe", ["symbol", "timeframe"], unique=False)

    op.create_table(
        "social_daily",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("coin_id", sa.String(length=100), nullable=False),
        sa.Column("mean_sentiment", sa.Double(), nullable=True),
        sa.Column("mention_count", sa.Integer(), nullable=False),
        sa.Column("post_count", sa.Integer(), nullable=False),
        sa.Column("fear_greed", sa.Integer(), nullable=True),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_social_daily")),
        sa.UniqueConstraint("day", "coin_id", name=op.f("uq_social_daily_day_coin_id")),
    )
    op.create_table(
        "social_posts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("source", sa.String(length=50), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("sentiment", sa.Double(), nullable=False),
        sa.Column("positive", sa.Double(), nullable=True),
        sa.Column("negative", sa.Double(), nullable=True),
        sa.Column("neutral", sa.Double(), nullable=True),
        sa.Column("scorer", sa.String(length=50), nullable=False),
        sa.Column(
            "coins",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("ingestion_run_id", sa.Uuid(), nullable=True),
        sa.Column("ingested_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_social_posts")),
        sa.UniqueConstraint("source", "external_id", name=op.f("uq_social_posts_source_external_id")),
    )
    with op.batch_alter_table("social_posts", schema=None) as batch_op:
        batch_op.create_index("ix_social_posts_published_at", ["published_at"], unique=False)

    op.create_table(
        "trending_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("coin_id", sa.String(length=100), nullable=False),
        sa.Column("symbol", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("volume_24h", sa.Double(), nullable=True),
        sa.Column("price_change_24h", sa.Double(), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("category", sa.String(length=50), nullable=True),
        sa.Column("social_mentions", sa.Integer(), nullable=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trending_tokens")),
        sa.UniqueConstraint("coin_id", "timestamp", name=op.f("uq_trending_tokens_coin_id_timestamp")),
    )
    with op.batch_alter_table("trending_tokens", schema=None) as batch_op:
        batch_op.create_index("idx_trending_tokens_category", ["category"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=50), nullable=True),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=20), server_default="user", nullable=False),
        sa.Column(
            "preferences",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "portfolios",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("symbol", sa.String(length=20), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=38, scale=18, asdecimal=False), nullable=False),
        sa.Column("avg_price", sa.Numeric(precision=38, scale=18, asdecimal=False), nullable=False),
        sa.Column("entry_date", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_portfolios_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portfolios")),
    )
    with op.batch_alter_table("portfolios", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_portfolios_user_id"), ["user_id"], unique=False)

    op.create_table(
        "quarantined_batches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ingestion_run_id", sa.Uuid(), nullable=True),
        sa.Column("dataset", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "validation_result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("payload_path", sa.String(length=500), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ingestion_run_id"],
            ["ingestion_runs.id"],
            name=op.f("fk_quarantined_batches_ingestion_run_id_ingestion_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantined_batches")),
    )
    with op.batch_alter_table("quarantined_batches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_quarantined_batches_ingestion_run_id"), ["ingestion_run_id"], unique=False)

    op.create_table(
        "user_alerts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("symbol", sa.String(length=20), nullable=False),
        sa.Column("alert_type", sa.String(length=50), nullable=False),
        sa.Column(
            "condition",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("triggered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_alerts_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_alerts")),
    )
    with op.batch_alter_table("user_alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_alerts_user_id"), ["user_id"], unique=False)

    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("session_token", sa.String(length=255), nullable=False),
        sa.Column("socket_id", sa.String(length=100), nullable=True),
        sa.Column("connected_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("disconnected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.UniqueConstraint("session_token", name=op.f("uq_user_sessions_session_token")),
    )
    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_sessions_user_id"), ["user_id"], unique=False)

    # Descending indexes from the seed (expression indexes: autogenerate cannot see them).
    op.create_index("idx_market_data_symbol_timestamp", "market_data", ["symbol", sa.text("timestamp DESC")])
    op.create_index("idx_market_data_timestamp", "market_data", [sa.text("timestamp DESC")])
    op.create_index("idx_predictions_created_at", "predictions", [sa.text("created_at DESC")])
    op.create_index("idx_trending_tokens_timestamp", "trending_tokens", [sa.text("timestamp DESC")])


def downgrade() -> None:
    op.drop_index("idx_trending_tokens_timestamp", table_name="trending_tokens")
    op.drop_index("idx_predictions_created_at", table_name="predictions")
    op.drop_index("idx_market_data_timestamp", table_name="market_data")
    op.drop_index("idx_market_data_symbol_timestamp", table_name="market_data")
    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_sessions_user_id"))

    op.drop_table("user_sessions")
    with op.batch_alter_table("user_alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_alerts_user_id"))

    op.drop_table("user_alerts")
    with op.batch_alter_table("quarantined_batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quarantined_batches_ingestion_run_id"))

    op.drop_table("quarantined_batches")
    with op.batch_alter_table("portfolios", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portfolios_user_id"))

    op.drop_table("portfolios")
    op.drop_table("users")
    with op.batch_alter_table("trending_tokens", schema=None) as batch_op:
        batch_op.drop_index("idx_trending_tokens_category")

    op.drop_table("trending_tokens")
    with op.batch_alter_table("social_posts", schema=None) as batch_op:
        batch_op.drop_index("ix_social_posts_published_at")

    op.drop_table("social_posts")
    op.drop_table("social_daily")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("idx_predictions_symbol_timeframe")
        batch_op.drop_index("idx_predictions_expires_at")

    op.drop_table("predictions")
    op.drop_table("market_data")
    with op.batch_alter_table("ingestion_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_ingestion_runs_started_at")

    op.drop_table("ingestion_runs")
    op.drop_table("fear_greed")
    with op.batch_alter_table("coins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_coins_symbol"))

    op.drop_table("coins")
