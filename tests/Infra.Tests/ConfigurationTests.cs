using System.ComponentModel.DataAnnotations;
using EventPipeline.Infra.Tests.Support;
using Microsoft.Extensions.Configuration;

namespace EventPipeline.Infra.Tests;

/// <summary>The environment the manifests give each service, checked against what the service's code reads.</summary>
public class ConfigurationTests
{
    /// <summary>
    /// Read by the platform, not by the project's code: the ASP.NET Core host and the OpenTelemetry SDK (ServiceDefaults
    /// turns the OTLP exporter on when OTEL_EXPORTER_OTLP_ENDPOINT is set), and the .NET runtime (DOTNET_ReadyToRun).
    /// </summary>
    private static readonly string[] PlatformKeys = ["ASPNETCORE_HTTP_PORTS", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT", "DOTNET_ReadyToRun"];

    public static TheoryData<string, string> ServicesPerOverlay => new()
    {
        { "overlays/dev", "producer-api" }, { "overlays/dev", "worker-cpu" }, { "overlays/dev", "worker-io" }, { "overlays/dev", "downstream-receiver" },
        { "overlays/prod", "producer-api" }, { "overlays/prod", "worker-cpu" }, { "overlays/prod", "worker-io" },
    };

    [Theory]
    [MemberData(nameof(ServicesPerOverlay))]
    public void Every_variable_set_is_an_option_the_service_reads(string overlay, string workloadName)
    {
        var rendered = Manifests.Render(overlay);
        var workload = rendered.Workload(workloadName);
        var facts = ServiceFacts.For(workloadName);
        var env = rendered.EnvironmentOf(workload, workload.MainContainer);
        var problems = new List<string>();

        foreach (var key in env.Keys)
        {
            if (PlatformKeys.Contains(key) || DefaultsFacts.RawKeys.Contains(key))
            {
                continue;
            }

            var path = key.Replace("__", ":", StringComparison.Ordinal);
            if (path.StartsWith("ConnectionStrings:", StringComparison.Ordinal))
            {
                if (!facts.ConnectionNames.Contains(path["ConnectionStrings:".Length..]))
                {
                    problems.Add($"{key}: {facts.Project} reads no connection string of that name (it reads: {string.Join(", ", facts.ConnectionNames)})");
                }

                continue;
            }

            if (!facts.Bindings.Keys.Any(section => path.StartsWith(section + ":", StringComparison.OrdinalIgnoreCase)))
            {
                problems.Add($"{key}: {facts.Project} binds no options section for it (it binds: {string.Join(", ", facts.Bindings.Keys)})");
            }
        }

        // Bind each section as the service does, refusing keys its options class lacks and values it cannot convert.
        var configuration = facts.EffectiveConfiguration(env);
        foreach (var (section, type) in facts.Bindings)
        {
            try
            {
                var value = configuration.GetSection(section).Get(type, o => o.ErrorOnUnknownConfiguration = true) ?? Activator.CreateInstance(type)!;
                var results = new List<ValidationResult>();
                if (!Validator.TryValidateObject(value, new ValidationContext(value), results, validateAllProperties: true))
                {
                    problems.AddRange(results.Select(r => $"{section}: {r.ErrorMessage}"));
                }
            }
            catch (InvalidOperationException ex)
            {
                problems.Add($"{section}: {ex.Message}");
            }
        }

        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public void An_unknown_option_fails_the_check()
    {
        // The binder check above is able to fail: a misspelt key under a bound section is refused.
        var facts = ServiceFacts.WorkerCpu;
        var configuration = facts.EffectiveConfiguration(new Dictionary<string, string> { ["CpuLane__DrainTimeOut2"] = "00:00:25" });
        Assert.Throws<InvalidOperationException>(() =>
            configuration.GetSection("CpuLane").Get(facts.Bindings["CpuLane"], o => o.ErrorOnUnknownConfiguration = true));
    }

    [Theory]
    [MemberData(nameof(ServicesPerOverlay))]
    public void Every_required_option_is_set(string overlay, string workloadName)
    {
        var rendered = Manifests.Render(overlay);
        var workload = rendered.Workload(workloadName);
        var facts = ServiceFacts.For(workloadName);
        var configuration = facts.EffectiveConfiguration(rendered.EnvironmentOf(workload, workload.MainContainer));

        foreach (var name in facts.ConnectionNames)
        {
            Assert.False(string.IsNullOrWhiteSpace(configuration.GetConnectionString(name)), $"{workloadName}: ConnectionStrings:{name} is not set");
        }

        if (workloadName == "producer-api")
        {
            var submit = configuration["Auth:ApiKeys:Submit"] ?? "";
            var admin = configuration["Auth:ApiKeys:Admin"] ?? "";
            Assert.True(submit.Length >= 16 && admin.Length >= 16 && submit != admin, "API keys must be set, 16+ characters, and differ");
        }

        if (workloadName == "worker-io")
        {
            // Worker.Io refuses to start on a list it cannot read; the origin it calls is its base address's.
            var downstream = configuration.GetSection("Downstream").Get<EventPipeline.Worker.Io.Delivery.DownstreamOptions>()!;
            Assert.True(downstream.TryGetOrigins(out var origins, out var error), $"{workloadName}: {error}");
            Assert.Contains(EventPipeline.Shared.DownstreamOrigins.OriginOf(downstream.BaseAddress), origins.Origins);
        }
    }

    [Fact]
    public void Production_config_has_test_events_off_and_allows_only_the_real_downstream()
    {
        var rendered = Manifests.Render("overlays/prod");
        foreach (var workload in rendered.AppWorkloads)
        {
            var configuration = ServiceFacts.For(workload.Name).EffectiveConfiguration(rendered.EnvironmentOf(workload, workload.MainContainer));
            Assert.False(configuration.GetValue<bool>("TestEvents:Enabled"), $"{workload.Name}: TestEvents:Enabled is on in prod");
        }

        Assert.DoesNotContain(rendered.Workloads, w => w.Name == "downstream-receiver");
        var io = rendered.Workload("worker-io");
        var downstream = ServiceFacts.WorkerIo.EffectiveConfiguration(rendered.EnvironmentOf(io, io.MainContainer))
            .GetSection("Downstream").Get<EventPipeline.Worker.Io.Delivery.DownstreamOptions>()!;
        Assert.Equal("https", downstream.BaseAddress.Scheme);
        Assert.True(downstream.TryGetOrigins(out var origins, out var error), error);
        Assert.Equal([EventPipeline.Shared.DownstreamOrigins.OriginOf(downstream.BaseAddress)!], origins.Origins);

        // No event may name its own target in prod: the API allows no origin.
        var api = rendered.Workload("producer-api");
        var targets = ServiceFacts.ProducerApi.EffectiveConfiguration(rendered.EnvironmentOf(api, api.MainContainer))
            .GetSection("Downstream").Get<EventPipeline.Producer.Validation.DownstreamTargetOptions>() ?? new();
        Assert.True(targets.TryGetOrigins(out var apiOrigins, out error), error);
        Assert.Equal(0, apiOrigins.Count);
    }

    [Fact]
    public void No_webhook_origin_beyond_the_base_address_is_allowed_unless_a_deployment_lists_it()
    {
        // Neither appsettings.json nor an appsettings.Development.json (which the AppHost and the tests load) allows an
        // origin: the AppHost passes the local receiver's, a deployment lists its own (Downstream:AllowedOrigins).
        foreach (var facts in new[] { ServiceFacts.ProducerApi, ServiceFacts.WorkerIo })
        {
            var builder = new ConfigurationBuilder().AddJsonFile(facts.AppSettingsPath).AddJsonFile(Repo.PathOf(facts.Project, "appsettings.Development.json"), optional: true);
            var downstream = builder.Build().GetSection("Downstream");
            Assert.Empty(downstream.GetSection("AllowedOrigins").GetChildren());
            Assert.Empty(downstream.GetSection("AllowedHosts").GetChildren());
        }

        // ...and no container runs as Development: with no environment set the host runs as Production.
        foreach (var overlay in Manifests.Overlays)
        {
            var rendered = Manifests.Render(overlay);
            foreach (var workload in rendered.AppWorkloads)
            {
                var env = rendered.EnvironmentOf(workload, workload.MainContainer);
                Assert.False(env.ContainsKey("ASPNETCORE_ENVIRONMENT") || env.ContainsKey("DOTNET_ENVIRONMENT"), $"{overlay}: {workload.Name} sets the host environment");
            }
        }
    }

    [Theory]
    [InlineData("overlays/dev")]
    [InlineData("overlays/prod")]
    public void Connection_strings_name_the_broker_services_of_the_overlay(string overlay)
    {
        var rendered = Manifests.Render(overlay);
        var api = rendered.Workload("producer-api");
        var configuration = ServiceFacts.ProducerApi.EffectiveConfiguration(rendered.EnvironmentOf(api, api.MainContainer));

        var redisHost = configuration.GetConnectionString("redis")!.Split(',')[0];
        var redisService = rendered.Get("Service", redisHost.Split(':')[0].Split('.')[0]);
        Assert.Contains(redisService["spec"]!["ports"]!.AsArray(), p => (long)p!["port"]! == long.Parse(redisHost.Split(':')[1], System.Globalization.CultureInfo.InvariantCulture));

        var rabbit = new Uri(configuration.GetConnectionString("rabbitmq")!);
        Assert.Equal("amqp", rabbit.Scheme);
        var rabbitName = rabbit.Host.Split('.')[0];
        Assert.True(rendered.Find("Service", rabbitName) is not null || rendered.Find("RabbitmqCluster", rabbitName) is not null,
            $"{overlay}: nothing named {rabbitName} provides RabbitMQ");

        if (overlay == "overlays/dev")
        {
            var io = rendered.Workload("worker-io");
            var baseAddress = new Uri(ServiceFacts.WorkerIo.EffectiveConfiguration(rendered.EnvironmentOf(io, io.MainContainer))["Downstream:BaseAddress"]!);
            var service = rendered.Get("Service", baseAddress.Host);
            Assert.Contains(service["spec"]!["ports"]!.AsArray(), p => (long)p!["port"]! == baseAddress.Port);
        }
    }
}
