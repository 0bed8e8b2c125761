using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using EventPipeline.Infra.Tests.Support;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace EventPipeline.Infra.Tests;

public class WorkloadTests
{
    public static TheoryData<string> Targets => [.. Manifests.Targets];

    public static TheoryData<string> Overlays => [.. Manifests.Overlays];

    [Theory]
    [MemberData(nameof(Targets))]
    public void Probes_call_the_health_endpoints_the_services_map(string target)
    {
        var rendered = Manifests.Render(target);
        Assert.NotEmpty(rendered.AppWorkloads);
        foreach (var workload in rendered.AppWorkloads)
        {
            var facts = ServiceFacts.For(workload.Name);
            Assert.Contains("app.MapDefaultEndpoints();", Repo.Read(facts.Project, "Program.cs"));
            var container = workload.MainContainer;

            Assert.Equal(DefaultsFacts.LivenessPath, (string?)container["startupProbe"]?["httpGet"]?["path"]);
            Assert.Equal(DefaultsFacts.LivenessPath, (string?)container["livenessProbe"]?["httpGet"]?["path"]);
            // The API stays ready while a broker is down (it answers 503 itself: ApiReadinessTests); a worker that
            // cannot reach its broker does no work and is unready.
            var readiness = workload.Name == "producer-api" ? DefaultsFacts.LivenessPath : DefaultsFacts.ReadinessPath;
            Assert.Equal(readiness, (string?)container["readinessProbe"]?["httpGet"]?["path"]);

            foreach (var probe in new[] { "startupProbe", "livenessProbe", "readinessProbe" })
            {
                var port = PortNumber(workload, container[probe]!["httpGet"]!["port"]!);
                Assert.Contains((int)port, facts.ContainerPorts);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays))]
    public void The_http_port_is_the_one_the_services_listen_on(string overlay)
    {
        var rendered = Manifests.Render(overlay);
        foreach (var workload in rendered.AppWorkloads)
        {
            var facts = ServiceFacts.For(workload.Name);
            var env = rendered.EnvironmentOf(workload, workload.MainContainer);
            var http = Assert.Single(workload.Ports, p => p.Name == "http");
            Assert.Equal(http.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), env["ASPNETCORE_HTTP_PORTS"]);
            Assert.Equal([(int)http.Port], facts.ContainerPorts);
        }
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void Prometheus_annotations_point_at_each_services_metrics_endpoint(string target)
    {
        var rendered = Manifests.Render(target);
        string[] scraped = target == "overlays/dev" ? ["producer-api", "worker-cpu", "worker-io", "downstream-receiver"] : ["producer-api", "worker-cpu", "worker-io"];
        foreach (var name in scraped)
        {
            var workload = rendered.Workload(name);
            var annotations = workload.PodAnnotations;
            Assert.Equal("true", annotations["prometheus.io/scrape"]);
            Assert.Equal(DefaultsFacts.MetricsPath, annotations["prometheus.io/path"]);
            var http = workload.Ports.Single(p => p.Name == "http");
            Assert.Equal(http.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), annotations["prometheus.io/port"]);
        }
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void Every_pod_runs_non_root_with_a_read_only_root_and_bounded_resources(string target)
    {
        var problems = new List<string>();
        foreach (var workload in Manifests.Render(target).Workloads)
        {
            var pod = workload.PodSpec;
            void Check(bool ok, string what)
            {
                if (!ok)
                {
                    problems.Add($"{workload.Name}: {what}");
                }
            }

            Check((bool?)pod["securityContext"]?["runAsNonRoot"] == true, "runAsNonRoot");
            Check((string?)pod["securityContext"]?["seccompProfile"]?["type"] == "RuntimeDefault", "seccompProfile RuntimeDefault");
            // A token only for a pod with its own ServiceAccount (dev Prometheus: MonitoringTests pins what it may do).
            var ownAccount = (string?)pod["serviceAccountName"] is { } account && account != "default";
            Check((bool?)pod["automountServiceAccountToken"] == false || ownAccount, "automountServiceAccountToken false (or its own ServiceAccount)");
            var emptyDirs = (pod["volumes"]?.AsArray().Cast<JsonObject>() ?? []).Where(v => v["emptyDir"] is not null).Select(v => (string)v["name"]!).ToHashSet();
            foreach (var c in workload.Containers)
            {
                var sc = c["securityContext"];
                Check((bool?)sc?["allowPrivilegeEscalation"] == false, "allowPrivilegeEscalation false");
                Check((bool?)sc?["readOnlyRootFilesystem"] == true, "readOnlyRootFilesystem");
                Check(sc?["capabilities"]?["drop"]?.AsArray().Any(d => (string?)d == "ALL") == true, "capabilities drop ALL");
                Check((c["volumeMounts"]?.AsArray().Cast<JsonObject>() ?? []).Any(m => (string?)m["mountPath"] == "/tmp" && emptyDirs.Contains((string)m["name"]!)), "/tmp on an emptyDir");
                foreach (var bound in new[] { "requests", "limits" })
                {
                    Check(c["resources"]?[bound]?["cpu"] is not null && c["resources"]?[bound]?["memory"] is not null, $"resources.{bound} cpu and memory");
                }

                Check(c["livenessProbe"] is not null && c["readinessProbe"] is not null && c["startupProbe"] is not null, "startup, liveness and readiness probes");
            }
        }

        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void App_pods_run_as_the_images_non_root_user(string target)
    {
        foreach (var workload in Manifests.Render(target).AppWorkloads)
        {
            var facts = ServiceFacts.For(workload.Name);
            Assert.NotNull(facts.ContainerUser);
            Assert.Equal(long.Parse(facts.ContainerUser!, System.Globalization.CultureInfo.InvariantCulture), (long?)workload.PodSpec["securityContext"]!["runAsUser"]);
            Assert.NotEqual("0", facts.ContainerUser);
        }
    }

    [Theory]
    [MemberData(nameof(Overlays))]
    public void Termination_grace_covers_the_workers_drain(string overlay)
    {
        var rendered = Manifests.Render(overlay);
        foreach (var name in new[] { "worker-cpu", "worker-io" })
        {
            var workload = rendered.Workload(name);
            var problem = GraceProblem(name, workload, rendered.EnvironmentOf(workload, workload.MainContainer));
            Assert.True(problem is null, problem);
        }

        // The API: its preStop pause, the host's default 30 s shutdown and the last telemetry export.
        var api = rendered.Workload("producer-api");
        var preStop = TimeSpan.FromSeconds((long?)api.MainContainer["lifecycle"]?["preStop"]?["sleep"]?["seconds"] ?? 0);
        var apiStop = preStop + TimeSpan.FromSeconds(30) + TelemetryFlushOf("producer-api", rendered.EnvironmentOf(api, api.MainContainer));
        var apiGrace = TimeSpan.FromSeconds((long)api.PodSpec["terminationGracePeriodSeconds"]!);
        Assert.True(apiGrace >= apiStop, $"producer-api: grace {apiGrace} < preStop, shutdown and telemetry flush {apiStop}");
    }

    [Fact]
    public void Termination_grace_check_counts_the_cpu_lanes_last_blocking_read()
    {
        // The host waits for the read loop's last blocking read too (while Redis stalls it cannot be ended early): an
        // overlay that raises CpuLane__BlockTimeout to 14 s (with a ClaimTimeout that allows it) makes worker-cpu's
        // ShutdownTimeout 25 + 14 + 5 + 5 + 10 = 59 s, past the 58 s grace. The check must catch that, or the kubelet
        // kills the pod before its take-back.
        var rendered = Manifests.Render("overlays/prod");
        var workload = rendered.Workload("worker-cpu");
        var environment = rendered.EnvironmentOf(workload, workload.MainContainer);
        environment["CpuLane__BlockTimeout"] = "00:00:14";
        environment["CpuLane__ClaimTimeout"] = "00:01:00";

        var problem = GraceProblem("worker-cpu", workload, environment);

        Assert.True(problem is not null, $"with CpuLane__BlockTimeout at 14 s the host waits 59 s after SIGTERM, but the grace check passed a grace of {workload.PodSpec["terminationGracePeriodSeconds"]} s");
    }

    /// <summary>Why the pod's grace period does not fit the host's shutdown timeout under this environment, or null.</summary>
    private static string? GraceProblem(string name, Workload workload, IReadOnlyDictionary<string, string> environment)
    {
        // The host's shutdown, then the last telemetry export (after it: TelemetryShutdown runs once the host stopped).
        var shutdown = ShutdownTimeoutOf(name, environment) + TelemetryFlushOf(name, environment);
        var grace = TimeSpan.FromSeconds((long)workload.PodSpec["terminationGracePeriodSeconds"]!);
        return grace < shutdown ? $"{name}: grace {grace} < shutdown {shutdown}"
            : grace > shutdown + TimeSpan.FromSeconds(15) ? $"{name}: grace {grace} is far beyond shutdown {shutdown}"
            : null;
    }

    /// <summary>The bound on a service's last telemetry export as ServiceDefaults reads it from this environment.</summary>
    private static TimeSpan TelemetryFlushOf(string name, IReadOnlyDictionary<string, string> environment)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Configuration.AddConfiguration(ServiceFacts.For(name).EffectiveConfiguration(environment));
        builder.AddServiceDefaults();
        using var services = builder.Services.BuildServiceProvider();
        return services.GetRequiredService<IOptions<EventPipeline.ServiceDefaults.TelemetryShutdownOptions>>().Value.ShutdownFlushTimeout;
    }

    /// <summary>
    /// The host's ShutdownTimeout as the worker's own registration (what its Program.cs calls) sets it from this
    /// environment and its appsettings.json: every term of the sum (the drain, worker-cpu's last blocking read and its
    /// reader timeout, the margin) is the product's, not a copy of its formula here.
    /// </summary>
    private static TimeSpan ShutdownTimeoutOf(string name, IReadOnlyDictionary<string, string> environment)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Configuration.AddConfiguration(ServiceFacts.For(name).EffectiveConfiguration(environment));
        // In the cluster the connection strings come from a Secret; registering needs them, nothing here connects.
        foreach (var (connection, value) in new[] { ("redis", "127.0.0.1:1,abortConnect=false"), ("rabbitmq", "amqp://guest:guest@127.0.0.1:1") })
        {
            builder.Configuration[$"ConnectionStrings:{connection}"] ??= value;
        }

        _ = name switch
        {
            "worker-cpu" => builder.AddCpuLane(),
            "worker-io" => builder.AddIoLane(),
            _ => throw new ArgumentOutOfRangeException(nameof(name), name, "not a worker"),
        };
        using var services = builder.Services.BuildServiceProvider();
        return services.GetRequiredService<IOptions<HostOptions>>().Value.ShutdownTimeout;
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void Service_selectors_match_pod_labels_and_ports(string target)
    {
        var rendered = Manifests.Render(target);
        foreach (var service in rendered.OfKind("Service"))
        {
            var name = Rendered.Name(service);
            var selector = Rendered.StringMap(service["spec"]!["selector"]);
            var ports = service["spec"]!["ports"]!.AsArray().Cast<JsonObject>().ToList();
            if (selector.Count == 0)
            {
                // No selector: its endpoints are given by an EndpointSlice (prod's external Redis).
                var slice = rendered.OfKind("EndpointSlice").SingleOrDefault(s => Rendered.StringMap(s["metadata"]!["labels"]).GetValueOrDefault("kubernetes.io/service-name") == name);
                Assert.True(slice is not null, $"{target}: Service {name} has no selector and no EndpointSlice");
                Assert.Equal(ports.Select(p => (string?)p["name"]).Order(), slice!["ports"]!.AsArray().Select(p => (string?)p!["name"]).Order());
                continue;
            }

            var selected = rendered.Workloads.Where(w => Rendered.Selects(selector, w.PodLabels)).ToList();
            Assert.True(selected.Count == 1, $"{target}: Service {name} selects {selected.Count} workloads");
            foreach (var port in ports)
            {
                PortNumber(selected[0], port["targetPort"] ?? port["port"]!);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void Disruption_budgets_cover_every_app_workload_and_select_one_each(string target)
    {
        var rendered = Manifests.Render(target);
        var covered = new List<string>();
        foreach (var pdb in rendered.OfKind("PodDisruptionBudget"))
        {
            var selector = Rendered.StringMap(pdb["spec"]!["selector"]!["matchLabels"]);
            // The RabbitmqCluster's pods are the operator's StatefulSet, labelled app.kubernetes.io/name=<cluster name>.
            var clusters = rendered.OfKind("RabbitmqCluster").Select(Rendered.Name)
                .Where(name => Rendered.Selects(selector, new Dictionary<string, string> { ["app.kubernetes.io/name"] = name })).ToList();
            var selected = rendered.Workloads.Where(w => Rendered.Selects(selector, w.PodLabels)).Select(w => w.Name).Concat(clusters).ToList();
            Assert.True(selected.Count == 1, $"PDB {Rendered.Name(pdb)} selects {selected.Count} workloads: {string.Join(", ", selected)}");
            covered.Add(selected[0]);
        }

        foreach (var workload in rendered.AppWorkloads.Where(w => w.Name != "downstream-receiver"))
        {
            Assert.Contains(workload.Name, covered);
        }

        // A drain must never take two RabbitMQ nodes at once: the quorum queues would lose their majority.
        foreach (var cluster in rendered.OfKind("RabbitmqCluster"))
        {
            Assert.Contains(Rendered.Name(cluster), covered);
            var pdb = rendered.OfKind("PodDisruptionBudget").Single(p => Rendered.StringMap(p["spec"]!["selector"]!["matchLabels"]).GetValueOrDefault("app.kubernetes.io/name") == Rendered.Name(cluster));
            Assert.Equal(1, (long)pdb["spec"]!["maxUnavailable"]!);
        }
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void Images_are_pinned_and_match_the_project_container_settings(string target)
    {
        foreach (var workload in Manifests.Render(target).Workloads)
        {
            foreach (var container in workload.Containers)
            {
                var image = (string)container["image"]!;
                var tag = image.Contains('@', StringComparison.Ordinal) ? null : image[(image.LastIndexOf(':') + 1)..];
                Assert.True(image.Contains('@', StringComparison.Ordinal) || (image.Contains(':', StringComparison.Ordinal) && tag != "latest"), $"{target}: {workload.Name} image {image} is not pinned");
                if (image.StartsWith("eventpipeline/", StringComparison.Ordinal))
                {
                    var facts = ServiceFacts.For(workload.Name);
                    Assert.Equal($"{facts.ContainerRepository}:{facts.ContainerImageTag}", image);
                }
            }
        }

        if (target == "overlays/prod")
        {
            var cluster = Manifests.Render(target).Get("RabbitmqCluster", "rabbitmq");
            Assert.Matches(@"^[\w./-]+:\d+\.\d+\.\d+", (string)cluster["spec"]!["image"]!);
        }
    }

    internal static long PortNumber(Workload workload, JsonNode port)
    {
        if (port.GetValueKind() == System.Text.Json.JsonValueKind.Number)
        {
            var number = port.GetValue<long>();
            Assert.Contains(workload.Ports, p => p.Port == number);
            return number;
        }

        var name = port.GetValue<string>();
        var match = workload.Ports.Where(p => p.Name == name).ToList();
        Assert.True(match.Count == 1, $"{workload.Name} has no container port named {name}");
        return match[0].Port;
    }
}
