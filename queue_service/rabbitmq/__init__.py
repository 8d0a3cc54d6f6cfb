"""Everything that speaks AMQP: the broker and its topology (`broker`), the job message
(`messages`), publishing after commit (`publishing`), the dead-letter queue's compaction
(`dead_letters`) and the readiness probe (`readiness`). Nothing else imports pika or
Dramatiq's RabbitMQ broker."""
