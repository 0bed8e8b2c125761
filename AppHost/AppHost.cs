var builder = DistributedApplication.CreateBuilder(args);

// Brokers: Aspire's containers when a container engine answers, otherwise Debian's redis-server and rabbitmq-server.
var hosting = builder.ResolveBrokerHosting();
var redisPassword = builder.AddParameter("redis-password", new GenerateParameterDefault { MinLength = 24, Special = false }, secret: true, persist: true);
var rabbitUser = builder.AddParameter("rabbitmq-user", "eventpipeline");
var rabbitPassword = builder.AddParameter("rabbitmq-password", new GenerateParameterDefault { MinLength = 24, Special = false }, secret: true, persist: true);

// Brokers:Topology=Cluster: Redis as a primary, two replicas and three Sentinels, and three RabbitMQ nodes joined into
// one cluster, each with one connection string naming every node (docs/ha.md). Container mode (Single) adds Aspire's
// own UIs: RedisInsight, and RabbitMQ's management plugin (the executables run it anyway).
var topology = builder.ResolveBrokerTopology();
var redis = topology == BrokerTopology.Cluster
    ? builder.AddPipelineRedisSentinelSet("redis", hosting, redisPassword)
    : builder.AddPipelineRedis("redis", hosting, redisPassword, container => container.WithRedisInsight());
var rabbitmq = topology == BrokerTopology.Cluster
    ? builder.AddPipelineRabbitMQCluster("rabbitmq", hosting, rabbitUser, rabbitPassword)
    : builder.AddPipelineRabbitMQ("rabbitmq", hosting, rabbitUser, rabbitPassword, container => container.WithManagementPlugin());

// API keys for local runs: generated once and kept in the AppHost's user secrets (see README, "API keys").
var submitKey = builder.AddParameter("api-key-submit", new GenerateParameterDefault { MinLength = 32, Special = false }, secret: true, persist: true);
var adminKey = builder.AddParameter("api-key-admin", new GenerateParameterDefault { MinLength = 32, Special = false }, secret: true, persist: true);
var testEvents = builder.Configuration["TestEvents:Enabled"] ?? "false";

// The HTTP receiver the I/O lane delivers webhooks to (stands in for a real downstream service).
var downstream = builder.AddProject<Projects.Downstream_Receiver>("downstream")
    // Worker.Io calls it on its own port, not through Aspire's development proxy: a deployment has no such hop.
    .WithEndpoint("http", endpoint =>
    {
        var port = LocalProcessResources.FreeLoopbackPort();
        (endpoint.Port, endpoint.TargetPort, endpoint.IsProxied) = (port, port, false);
    })
    // As for worker-io below: fully optimized code instead of the framework's ReadyToRun code (tiering is off).
    .WithEnvironment("DOTNET_ReadyToRun", "0")
    .WithHttpHealthCheck("/health/ready");

var api = builder.AddProject<Projects.Producer_Api>("producer-api")
    .WithExternalHttpEndpoints()
    .WithReference(redis).WaitFor(redis)
    .WithReference(rabbitmq).WaitFor(rabbitmq)
    .WithEnvironment("Auth__ApiKeys__Submit", submitKey)
    .WithEnvironment("Auth__ApiKeys__Admin", adminKey)
    .WithEnvironment("TestEvents__Enabled", testEvents)
    // An event's optional "target" URL must be on one of these origins: the local receiver's (Worker.Io allows its own base address).
    .WithEnvironment("Downstream__AllowedOrigins__0", downstream.GetEndpoint("http"))
    .WithHttpHealthCheck("/health/ready")
    .WithUrlForEndpoint("http", url => url.DisplayText = "API")
    .WithUrlForEndpoint("http", _ => new() { Url = "/scalar", DisplayText = "API reference (Scalar)" })
    .WithUrlForEndpoint("http", _ => new() { Url = "/openapi/v1.json", DisplayText = "OpenAPI document" })
    .WithOperatorCommands(adminKey);
if (topology == BrokerTopology.Cluster)
{
    // A 202 only once a replica holds the write too, so the primary's death cannot take it along.
    api.WithEnvironment("Ingest__RedisReplicaAcks", "1");
}
if (rabbitmq.Resource is LocalRabbitMQResource localRabbit)
{
    // Unacknowledged counts of the I/O lane come from RabbitMQ's Prometheus plugin (AMQP reports ready messages only).
    api.WithEnvironment("LaneMonitor__RabbitMqPrometheusUrl", localRabbit.PrometheusEndpoint);
}

// Workers:CpuReplicas / Workers:IoReplicas processes of each worker (1 each; 3 and 2 in Cluster mode): one killed, the others go on.
var clustered = topology == BrokerTopology.Cluster;
var workerCpu = builder.AddProject<Projects.Worker_Cpu>("worker-cpu")
    .WithReplicas(builder.WorkerReplicaCount(WorkerReplicas.CpuSetting, clustered ? 3 : 1))
    .WithReference(redis).WaitFor(redis)
    .WithReference(rabbitmq).WaitFor(rabbitmq) // a chained event hands its result on to the I/O lane
    .WithEnvironment("TestEvents__Enabled", testEvents)
    .WithHttpHealthCheck("/health/ready")
    .WithRestartOnCrash(); // Workers:RestartOnCrash=false leaves a crashed worker down (the bench's chaos mode starts it itself)

var workerIo = builder.AddProject<Projects.Worker_Io>("worker-io")
    .WithReplicas(builder.WorkerReplicaCount(WorkerReplicas.IoSetting, clustered ? 2 : 1))
    .WithReference(rabbitmq).WaitFor(rabbitmq)
    .WithReference(redis).WaitFor(redis)
    .WithReference(downstream).WaitFor(downstream)
    .WithEnvironment("Downstream__BaseAddress", downstream.GetEndpoint("http"))
    // The local receiver is ours to load: let the lane run at bench speed (defaults suit a real downstream).
    .WithEnvironment("Downstream__PermitsPerSecond", "20000")
    // 512 webhooks in flight (prefetch twice that): with a 50 ms sink each slot is busy ~78 ms on these 2 cores, so 256
    // slots held the drain near 3,000/s; paired bursts at 512 drained 3,650-3,683/s against 2,681-2,937 (docs/benchmarks.md,
    // "Session 7: I/O lane").
    .WithEnvironment("IoLane__ConcurrentMessageLimit", "512")
    .WithEnvironment("IoLane__PrefetchCount", "1024")
    // The framework's precompiled (ReadyToRun) code, which tiered compilation off never replaces, was a third of this
    // worker's CPU: compiled fully optimized instead, worker-io cost 220-325 µs per 50 ms webhook against 380-470 and
    // the receiver 65-115 against 125-160 (suite A B B A B, docs/benchmarks-history.md "Session 11"), for ~2-5 s more CPU at start.
    .WithEnvironment("DOTNET_ReadyToRun", "0")
    .WithEnvironment("TestEvents__Enabled", testEvents)
    .WithHttpHealthCheck("/health/ready")
    .WithRestartOnCrash();

if (bool.TryParse(testEvents, out var testEventsEnabled) && testEventsEnabled)
{
    workerCpu.WithTestEventCommands("cpu", api, adminKey);
    workerIo.WithTestEventCommands("io", api, adminKey);
}

// Prometheus scraping every service, RabbitMQ's plugin and a Redis exporter (+ Grafana when containers run); see docs/observability.md.
builder.AddPipelineMonitoring(hosting, redis.MonitoredRedisNode(), redisPassword, rabbitmq.ScrapedRabbitMQNode(), api, workerCpu, workerIo, downstream);

builder.Build().Run();
