using System.Collections.Concurrent;
using System.Text.Json;
using System.Text.Json.Nodes;
using Json.Schema;

namespace EventPipeline.Infra.Tests.Support;

/// <summary>
/// Strict validation of rendered objects against the schemas kept in infra/k8s/schemas (see its README for sources):
/// every object type there has additionalProperties:false, so an unknown or misspelt field is an error.
/// </summary>
public static class Schemas
{
    public const string KubernetesFile = "k8s-1.32.0.strict.schema.json";
    public const string KedaFile = "keda-2.19.0.strict.schema.json";
    public const string RabbitmqClusterFile = "rabbitmqcluster-v1beta1.handwritten.schema.json";
    public const string PrometheusOperatorFile = "prometheus-operator-v1.strict.schema.json";

    /// <summary>apiVersion/kind → (schema file, definition). A kind missing here fails validation: add it to generate.sh.</summary>
    public static readonly IReadOnlyDictionary<string, (string File, string Definition)> Kinds = new Dictionary<string, (string, string)>
    {
        ["v1/Namespace"] = (KubernetesFile, "Namespace"),
        ["v1/ConfigMap"] = (KubernetesFile, "ConfigMap"),
        ["v1/Secret"] = (KubernetesFile, "Secret"),
        ["v1/Service"] = (KubernetesFile, "Service"),
        ["v1/ServiceAccount"] = (KubernetesFile, "ServiceAccount"),
        ["v1/PersistentVolumeClaim"] = (KubernetesFile, "PersistentVolumeClaim"),
        ["apps/v1/Deployment"] = (KubernetesFile, "Deployment"),
        ["apps/v1/StatefulSet"] = (KubernetesFile, "StatefulSet"),
        ["policy/v1/PodDisruptionBudget"] = (KubernetesFile, "PodDisruptionBudget"),
        ["networking.k8s.io/v1/NetworkPolicy"] = (KubernetesFile, "NetworkPolicy"),
        ["autoscaling/v2/HorizontalPodAutoscaler"] = (KubernetesFile, "HorizontalPodAutoscaler"),
        ["discovery.k8s.io/v1/EndpointSlice"] = (KubernetesFile, "EndpointSlice"),
        ["rbac.authorization.k8s.io/v1/Role"] = (KubernetesFile, "Role"),
        ["rbac.authorization.k8s.io/v1/RoleBinding"] = (KubernetesFile, "RoleBinding"),
        ["keda.sh/v1alpha1/ScaledObject"] = (KedaFile, "ScaledObject"),
        ["keda.sh/v1alpha1/TriggerAuthentication"] = (KedaFile, "TriggerAuthentication"),
        ["rabbitmq.com/v1beta1/RabbitmqCluster"] = (RabbitmqClusterFile, "RabbitmqCluster"),
        ["monitoring.coreos.com/v1/PodMonitor"] = (PrometheusOperatorFile, "PodMonitor"),
        ["monitoring.coreos.com/v1/ServiceMonitor"] = (PrometheusOperatorFile, "ServiceMonitor"),
        ["monitoring.coreos.com/v1/PrometheusRule"] = (PrometheusOperatorFile, "PrometheusRule"),
    };

    private static readonly ConcurrentDictionary<string, JsonSchema> Compiled = new();

    public static JsonObject LoadFile(string file) => (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(Repo.Schemas, file)))!;

    /// <summary>The validation errors of one object ("path: message"), empty when it is valid.</summary>
    public static List<string> Validate(JsonObject obj)
    {
        var key = $"{obj["apiVersion"]}/{obj["kind"]}";
        if (!Kinds.TryGetValue(key, out var entry))
        {
            return [$"no schema for {key}"];
        }

        var schema = Compiled.GetOrAdd(key, _ => Build(entry.File, entry.Definition));
        var element = JsonSerializer.SerializeToElement(obj);
        var results = schema.Evaluate(element, new EvaluationOptions { OutputFormat = OutputFormat.List });
        if (results.IsValid)
        {
            return [];
        }

        var errors = (results.Details ?? [])
            .Where(d => d.Errors is { Count: > 0 })
            .SelectMany(d => d.Errors!.Select(e => $"{d.InstanceLocation}: {e.Key}: {e.Value}"))
            .Distinct()
            .ToList();
        return errors.Count > 0 ? errors : ["invalid (no detail)"];
    }

    private static JsonSchema Build(string file, string definition)
    {
        var document = LoadFile(file);
        var definitions = (JsonObject)document["definitions"]!;
        if (file != KubernetesFile)
        {
            // CRD schemas may refer to Kubernetes types (ObjectMeta, ResourceRequirements, ...): merge them in.
            foreach (var (name, value) in LoadFile(KubernetesFile)["definitions"]!.AsObject())
            {
                if (!definitions.ContainsKey(name))
                {
                    definitions[name] = value!.DeepClone();
                }
            }
        }

        var root = new JsonObject
        {
            ["$schema"] = "http://json-schema.org/draft-07/schema#",
            ["allOf"] = new JsonArray(new JsonObject { ["$ref"] = $"#/definitions/{definition}" }),
            ["definitions"] = definitions.DeepClone(),
        };
        var options = new BuildOptions { SchemaRegistry = new SchemaRegistry() };
        return JsonSchema.FromText(root.ToJsonString(), options, new Uri($"https://schemas.eventpipeline.invalid/{file}/{definition}"));
    }
}
